from __future__ import annotations

from pathlib import Path

import pytest

from drainctl import config
from drainctl.errors import ConfigError


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "drainctl.toml"
    path.write_text(text)
    return path


def test_defaults_without_a_file() -> None:
    settings = config.load(None)
    assert settings.http.listen == "127.0.0.1:9540"
    assert settings.broker_url({}) == config.DEFAULT_BROKER_URL


def test_a_valid_file(tmp_path: Path) -> None:
    settings = config.load(write(tmp_path, '[controller]\nid = "ctl-1"\nsilent_after_s = 5\n[http]\nlisten = "0.0.0.0:9000"\n'))
    assert settings.controller.id == "ctl-1" and settings.controller.silent_after_s == 5.0
    assert settings.http.listen == "0.0.0.0:9000"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('[controller]\nid = "ok"\nsilent_after_s = -1\n', ":3: controller.silent_after_s: Input should be greater than 0"),
        ('[controller]\nsilnet_after_s = 3\n', ":2: controller.silnet_after_s: unknown key"),
        ('[http]\nlisten = "nowhere"\n', ":2: http.listen: must be HOST:PORT"),
        ('[controller]\nid = "bad id!"\n', ":2: controller.id: must be 1-63 characters"),
        ('[events]\nprefetch = "lots"\n', ":2: events.prefetch: Input should be a valid integer"),
        ('[brokr]\nurl = "amqp://x"\n', ":1: brokr: unknown key"),
        ("[controller\n", "not valid TOML"),
        ('[broker]\nreply_timeout_s = 1\nconsumer_timeout_s = 0\n',
         ":3: broker.consumer_timeout_s: Input should be greater than 0"),
        ('[broker]\nconsumer_timeout_s = "30m"\n', ":2: broker.consumer_timeout_s: Input should be a valid number"),
        ('[broker]\nconsumer_timeout_warn_at = 0\n', ":2: broker.consumer_timeout_warn_at: Input should be greater than 0"),
        ('[broker]\nconsumer_timeout_warn_at = 80\n',
         ":2: broker.consumer_timeout_warn_at: Input should be less than or equal to 1"),
    ],
)
def test_errors_name_file_line_and_key(tmp_path: Path, text: str, expected: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        config.load(path)
    message = str(info.value)
    assert str(path) in message
    assert expected in message


def test_non_utf8_and_missing_files_are_clear(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_bytes(b"\xff\xfe")
    with pytest.raises(ConfigError, match="not UTF-8"):
        config.load(path)
    with pytest.raises(ConfigError, match="cannot read the config file"):
        config.load(tmp_path / "missing.toml")


def test_broker_url_precedence_and_file(tmp_path: Path) -> None:
    secret = tmp_path / "url"
    secret.write_text("amqp://u:p@from-file//\n")
    settings = config.load(write(tmp_path, f'[broker]\nurl = "amqp://u:p@inline//"\nurl_file = "{secret}"\n'))
    assert settings.broker_url({}) == "amqp://u:p@from-file//"
    assert settings.broker_url({"DRAINCTL_BROKER_URL": "amqp://u:p@env//"}) == "amqp://u:p@env//"
    inline = config.load(write(tmp_path, '[broker]\nurl = "amqp://u:p@inline//"\n'))
    assert inline.broker_url({}) == "amqp://u:p@inline//"
    missing = config.load(write(tmp_path, f'[broker]\nurl_file = "{tmp_path / "nope"}"\n'))
    with pytest.raises(ConfigError, match=r"\[broker\] url_file: cannot read"):
        missing.broker_url({})


def test_api_token_sources(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("s3cret\n")
    settings = config.load(write(tmp_path, f'[http]\ntoken_file = "{token}"\n'))
    assert settings.api_token({}) == "s3cret"
    assert settings.api_token({"DRAINCTL_API_TOKEN": "env"}) == "env"
    assert config.load(None).api_token({}) is None


POOL = '''
[[pool]]
name = "default"
queues = ["default"]
replicas = 3
command = ["celery", "-A", "proj", "worker"]

[[pool]]
name = "reports"
queues = ["reports"]
replicas = 1
command = ["celery", "-A", "proj", "worker", "-n", "{hostname}", "-Q", "{queues}"]
'''


def test_pools_parse_with_defaults_and_a_version_from_their_content(tmp_path: Path) -> None:
    settings = config.load(write(tmp_path, POOL))
    pools = settings.pools()
    assert list(pools) == ["default", "reports"]
    default = pools["default"]
    assert (default.surge, default.cap, default.runtime) == (1, 4, "process")
    assert len(default.target_version) == 8
    changed = config.load(write(tmp_path, POOL.replace('replicas = 3', 'replicas = 3\nenv = {A = "1"}', 1)))
    assert changed.pools()["default"].target_version != default.target_version


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (("replicas = 1", "replicas = 0"), ":11: pool.1.replicas: Input should be greater than or equal to 1"),
        (("replicas = 1", "replicas = 1\nmax_per_host = 1"),
         ":11: pool.1.replicas: replicas (1) + 1 is above max_per_host (1)"),
        (("replicas = 1", "min_replicas = 3\nmax_replicas = 2"),
         ":11: pool.1.min_replicas: min_replicas (3) is above max_replicas (2)"),
        (("replicas = 1", "min_replicas = 1\nmax_replicas = 6\nmax_per_host = 6"),
         ":12: pool.1.max_replicas: max_replicas (6) + 1 is above max_per_host (6)"),
        (("replicas = 1", 'replicas = 1\ncanary = { steps = [1, "150%"] }'),
         ":12: pool.1.canary.steps: '150%': a step is a number of workers (1) or a share below 100 %"),
        (("replicas = 1", "replicas = 1\ncanary = { steps = [1], on_timeout = \"later\" }"),
         ":12: pool.1.canary.on_timeout: Input should be 'promote', 'hold' or 'abort'"),
        (("replicas = 1", "replicas = 1\ncanary = { steps = [0] }"), ":12: pool.1.canary.steps: a step of 0"),
        (("replicas = 1", "replicas = 1\ncanary = { step = [1] }"), ":12: pool.1.canary.step: unknown key"),
        (("replicas = 1", "min_replicas = 1"), ":8: pool.1.max_replicas: missing: an elastic pool sets both"),
        (("replicas = 1", "replicas = 9\nmin_replicas = 1\nmax_replicas = 4"),
         ":11: pool.1.replicas: replicas (9), the size at start, must lie within min_replicas..max_replicas"),
        (('name = "reports"', 'name = "default"'), "pool names must be unique; repeated: default"),
        (('"{queues}"', '"{queue}"'), "unknown placeholder {queue}"),
        (('replicas = 1', 'replicas = 1\nruntime = "docker"'), "runtime 'docker' needs an image"),
        (('name = "reports"', 'name = "has space"'), ":9: pool.1.name: must be 1-31 letters"),
    ],
)
def test_pool_errors_point_at_the_right_table(tmp_path: Path, edit: tuple[str, str], expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        config.load(write(tmp_path, POOL.replace(*edit)))
    assert expected in str(info.value)


def test_an_elastic_pool_starts_at_min_and_is_capped_at_max(tmp_path: Path) -> None:
    settings = config.load(write(tmp_path, POOL.replace("replicas = 1", "min_replicas = 2\nmax_replicas = 5")))
    reports = settings.pools()["reports"]
    assert (reports.replicas, reports.elastic, reports.cap) == (2, True, 6)
    assert not settings.pools()["default"].elastic


def test_a_change_that_leaves_a_queue_without_consumer_is_detected(tmp_path: Path) -> None:
    old = config.load(write(tmp_path, POOL))
    new = config.load(write(tmp_path, POOL.split("[[pool]]\nname = \"reports\"")[0]))
    assert config.uncovered_queues(old, new) == ["reports"]
    assert config.uncovered_queues(old, old) == []


DOCKER_POOL = '[[pool]]\nname = "p"\nqueues = ["q"]\nreplicas = 1\ncommand = ["w"]\nruntime = "docker"\nimage = "i"\n'


@pytest.mark.parametrize("host", ["unix:///run/user/1000/docker.sock", "tcp://127.0.0.1:2375", "https://docker.example:2376"])
def test_docker_host_key_wins_over_docker_host_env(tmp_path: Path, host: str) -> None:
    settings = config.load(write(tmp_path, f'[docker]\nhost = "{host}"\n'))
    assert settings.docker_host({"DOCKER_HOST": "unix:///elsewhere.sock"}) == host


TLS_FILES = 'ca_file = "ca.pem"\ncert_file = "cert.pem"\nkey_file = "key.pem"\n'


@pytest.mark.parametrize(("docker", "expected"), [
    ('host = "tcp://docker.example:2375"\n', r"tcp://docker\.example:2375 is an engine's API on the network without "
     r"TLS: .* Start dockerd with --tlsverify and give ca_file, cert_file and key_file"),
    ('host = "http://docker.example:2375"\n', "without TLS"),
    ('host = "tcp://docker.example:2376"\ncert_file = "cert.pem"\n', "cert_file and key_file: give both"),
    (f'host = "unix:///run/docker.sock"\n{TLS_FILES}', "only for an engine at tcp://HOST:PORT"),
    (TLS_FILES, "only for an engine at tcp://HOST:PORT; set host"),
])
def test_a_remote_engine_needs_tls_and_tls_needs_a_remote_engine(tmp_path: Path, docker: str, expected: str) -> None:
    path = write(tmp_path, f'[controller]\nid = "c"\n\n[docker]\n{docker}')
    with pytest.raises(ConfigError, match=expected) as info:
        config.load(path)
    assert f"{path}:4: docker: " in str(info.value)


@pytest.mark.parametrize("docker", [f'host = "tcp://docker.example:2376"\n{TLS_FILES}',
                                    'host = "tcp://docker.example:2376"\nca_file = "ca.pem"\n',
                                    'host = "tcp://localhost:2375"\n', 'host = "tcp://[::1]:2375"\n'])
def test_a_remote_engine_over_tls_and_a_local_one_without_it_load(tmp_path: Path, docker: str) -> None:
    settings = config.load(write(tmp_path, f"[docker]\n{docker}"))
    assert settings.docker.host is not None


def test_docker_host_env_then_aiodockers_own_lookup(tmp_path: Path) -> None:
    settings = config.load(None)
    assert settings.docker_host({"DOCKER_HOST": "tcp://127.0.0.1:2375"}) == "tcp://127.0.0.1:2375"
    assert settings.docker_host({}) is None  # aiodocker: the docker CLI's context, then /var/run/docker.sock
    with pytest.raises(ConfigError, match=r"DOCKER_HOST: must be unix:///.*three slashes"):
        settings.docker_host({"DOCKER_HOST": "unix://relative/docker.sock"})


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("/var/run/docker.sock", "must be unix:///absolute/path/docker.sock or tcp://HOST:PORT"),
        ("ssh://me@host", "got 'ssh://me@host'"),
        ("unix://docker.sock", "three slashes"),
        ("tcp://127.0.0.1", "give the host and the port"),
        ("tcp://127.0.0.1:notaport", "got 'tcp://127.0.0.1:notaport'"),
    ],
)
def test_a_bad_docker_host_is_named_with_its_line(tmp_path: Path, host: str, expected: str) -> None:
    path = write(tmp_path, f'[controller]\nid = "c"\n\n[docker]\nhost = "{host}"\n')
    with pytest.raises(ConfigError) as info:
        config.load(path)
    assert f"{path}:5: docker.host: " in str(info.value)
    assert expected in str(info.value)


def test_run_refuses_a_bad_docker_host_before_starting(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from drainctl.cli import main

    path = write(tmp_path, DOCKER_POOL)
    result = CliRunner().invoke(main, ["run", "--config", str(path)], env={"DOCKER_HOST": "docker:2375"})
    assert result.exit_code == 2
    assert "DOCKER_HOST: must be unix:///" in result.output


def test_consumer_timeout_defaults_to_rabbitmqs_and_is_given_in_seconds(tmp_path: Path) -> None:
    defaults = config.load(None).broker
    assert (defaults.consumer_timeout_s, defaults.consumer_timeout_warn_at) == (1800.0, 0.8)
    broker = config.load(write(tmp_path, "[broker]\nconsumer_timeout_s = 7200\nconsumer_timeout_warn_at = 1\n")).broker
    assert (broker.consumer_timeout_s, broker.consumer_timeout_warn_at) == (7200.0, 1.0)


def test_drain_policy_of_a_pool_comes_from_its_keys(tmp_path: Path) -> None:
    from drainctl.pools import target_of

    text = POOL.replace('command = ["celery", "-A", "proj", "worker"]',
                        'command = ["celery", "-A", "proj", "worker"]\nretire_grace_s = 3\nstop_timeout_s = 9', 1)
    pools = config.load(write(tmp_path, text)).pools()
    policy = target_of(pools["default"], host="h").drain_policy
    assert (policy.retire_grace_s, policy.stop_timeout_s) == (3.0, 9.0)
    assert target_of(pools["reports"], host="h").drain_policy.retire_grace_s == 15.0
    # How long drainctl waits is not what a worker is: no new version for it.
    assert pools["default"].fingerprint == config.load(write(tmp_path, POOL)).pools()["default"].fingerprint


ENGINES = '''
[[docker.engine]]
name = "a"
host = "unix:///run/a/docker.sock"

[[docker.engine]]
name = "b"
host = "tcp://192.0.2.10:2376"
ca_file = "/etc/drainctl/ca.pem"
cert_file = "/etc/drainctl/cert.pem"
key_file = "/etc/drainctl/key.pem"

[[pool]]
name = "etl"
queues = ["etl"]
replicas = 3
runtime = "docker"
image = "etl:1"
command = ["celery", "-A", "proj", "worker"]
max_per_host = 2
'''


def test_a_docker_pool_spreads_over_every_engine_unless_it_names_some(tmp_path: Path) -> None:
    from drainctl.pools import runtime_names, target_of

    settings = config.load(write(tmp_path, ENGINES))
    pool = settings.pools()["etl"]
    assert settings.engines_of(pool) == ("a", "b")
    assert runtime_names(settings, pool) == ("docker:a", "docker:b")
    target = target_of(pool, engines=settings.engines_of(pool))
    assert (target.cap, target.per_engine_cap, target.engines) == (4, 2, ("a", "b"))
    only_b = config.load(write(tmp_path, ENGINES.replace('max_per_host = 2', 'max_per_host = 4\nengines = ["b"]')))
    assert only_b.engines_of(only_b.pools()["etl"]) == ("b",)


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (("max_per_host = 2", 'max_per_host = 2\nengines = ["a", "z"]'),
         ":21: pool.0.engines: engines: z not among the [[docker.engine]] names (a, b)"),
        (("max_per_host = 2", "max_per_host = 1"),
         ":16: pool.0.replicas: replicas (3) + 1 is above max_per_host (1) x 2 engines"),
        (('name = "b"', 'name = "a"'), "engine names must be unique; repeated: a"),
        (('host = "tcp://192.0.2.10:2376"', 'host = "ftp://x"'), ":8: docker.engine.1.host: must be unix:///"),
        (('ca_file = "/etc/drainctl/ca.pem"\ncert_file = "/etc/drainctl/cert.pem"\nkey_file = "/etc/drainctl/key.pem"\n', ""),
         "is an engine's API on the network without TLS"),
        (('runtime = "docker"\nimage = "etl:1"', 'engines = ["a"]'), 'engines: only for a pool with runtime = "docker"'),
    ],
)
def test_engine_errors_name_the_key(tmp_path: Path, edit: tuple[str, str], expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        config.load(write(tmp_path, ENGINES.replace(*edit)))
    assert expected in str(info.value)


def test_engines_without_engine_tables_are_refused(tmp_path: Path) -> None:
    text = POOL.replace('replicas = 1', 'replicas = 1\nruntime = "docker"\nimage = "x"\nengines = ["a"]')
    with pytest.raises(ConfigError, match=r"pool\.1\.engines: engines: no \[\[docker\.engine\]\] table"):
        config.load(write(tmp_path, text))
