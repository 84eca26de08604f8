from drainctl.cli import main

main()
