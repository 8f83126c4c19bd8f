"""Configuration: precedence, and one clear line for every bad input."""

from __future__ import annotations

import pytest

from console.core.config import ConfigError, load_config


def write(tmp_path, text: str):
    (tmp_path / "nginx" / "conf.d").mkdir(parents=True, exist_ok=True)
    p = tmp_path / "canary.toml"
    p.write_text(text)
    return p


def test_defaults_are_the_seeds(tmp_path):
    cfg = load_config(write(tmp_path, ""), environ={})
    assert cfg.stages == [1, 5, 25, 100]
    assert cfg["rollout"]["observation_period"] == 900 and cfg["rollout"]["check_interval"] == 15
    assert cfg.p95_thresholds == {"fast": 2.5, "balanced": 3.2, "creative": 4.5}
    assert cfg["gates"]["error_rate"] == 0.005 and cfg["gates"]["critical_error_rate"] == 0.01
    assert cfg.upstream_file == tmp_path / "nginx/conf.d/upstream.conf"


def test_precedence_cli_over_env_over_dotenv_over_toml(tmp_path):
    p = write(tmp_path, '[prometheus]\nurl = "http://toml:9090"\n[rollout]\nobservation_period = 100\n')
    (tmp_path / ".env").write_text("PROMETHEUS_URL=http://dotenv:9090\nCANARY_OBSERVATION_PERIOD=200\n")
    cfg = load_config(p, environ={})
    assert cfg["prometheus"]["url"] == "http://dotenv:9090" and cfg["rollout"]["observation_period"] == 200
    cfg = load_config(p, environ={"PROMETHEUS_URL": "http://env:9090"})
    assert cfg["prometheus"]["url"] == "http://env:9090"
    cfg = load_config(p, environ={"CANARY_OBSERVATION_PERIOD": "300"}, overrides={("rollout", "observation_period"): 30})
    assert cfg["rollout"]["observation_period"] == 30
    assert cfg.env["CANARY_OBSERVATION_PERIOD"] == "300"


@pytest.mark.parametrize(
    "text, needle",
    [
        ("[rollout]\nstages = [1, 5, 25]\n", "stages"),
        ("[rollout]\nstages = [5, 1, 100]\n", "strictly increasing"),
        ("[rollout]\nstages = [0, 50, 100]\n", "1..100"),
        ("[rollout]\nstages = [1, 5, 5, 100]\n", "strictly increasing"),
        ("[rollout]\nstages = [1, 5, 101]\n", "ending at 100"),
        ("[rollout]\nstages = \"1,5,100\"\n", "a list of integers"),
        ("[rollout]\nobservation_priod = 5\n", "unknown key [rollout] observation_priod"),
        ("[rolout]\n", "unknown section [rolout]"),
        ("[rollout]\ncheck_interval = \"fast\"\n", "a number"),
        ("[gates.p95_latency]\nturbo = 1.0\n", "unknown key [gates.p95_latency] turbo"),
        ("[metrics]\nsource = \"graphite\"\n", "prometheus or scrape"),
        ("[nginx]\ntest_command = \"nginx -t\"\n", "a list of strings"),
        ("[nginx]\nupstream_file = \"missing/dir/upstream.conf\"\n", "does not exist"),
        ("not toml [", "not valid TOML"),
    ],
)
def test_bad_config_is_one_clear_line(tmp_path, text, needle):
    p = write(tmp_path, text)
    with pytest.raises(ConfigError) as e:
        load_config(p, environ={})
    msg = str(e.value)
    assert needle in msg and "\n" not in msg
    assert str(p) in msg or "TOML" in msg


def test_bad_env_value_names_the_variable(tmp_path):
    p = write(tmp_path, "")
    with pytest.raises(ConfigError, match="CANARY_OBSERVATION_PERIOD"):
        load_config(p, environ={"CANARY_OBSERVATION_PERIOD": "soon"})


def test_example_config_documents_every_key_with_its_default(tmp_path):
    import tomllib
    from pathlib import Path

    from console.core.config import SCHEMA

    example = Path(__file__).parents[1] / "canary.toml.example"
    data = tomllib.loads(example.read_text())
    flat = {}
    for section, body in data.items():
        for k, v in body.items():
            if isinstance(v, dict):
                flat.update({(f"{section}.{k}", k2): v2 for k2, v2 in v.items()})
            else:
                flat[(section, k)] = v
    assert set(flat) == {(s, k) for s, keys in SCHEMA.items() for k in keys}
    for (s, k), v in flat.items():
        assert v == SCHEMA[s][k][1], (s, k)


def test_example_config_documents_every_custom_gate_key():
    """[[gates.custom]] has no default (none), so the example shows one commented out: uncommented,
    it is valid TOML, a valid gate, and it uses every key a custom gate has."""
    import tomllib
    from pathlib import Path

    from console.core.custom_gates import KEYS, parse_custom_gates

    lines = (Path(__file__).parents[1] / "canary.toml.example").read_text().splitlines()
    start = lines.index("# [[gates.custom]]")
    block = []
    for line in lines[start:]:
        if not line.startswith("# "):
            break
        block.append(line[2:])
    tables = tomllib.loads("\n".join(block))["gates"]["custom"]
    assert len(tables) == 1 and set(tables[0]) == set(KEYS)
    (gate,) = parse_custom_gates(tables, where="canary.toml.example", source="prometheus", min_requests=20)
    assert gate.gate == "custom.p95" and gate.relative


def test_versions_are_ascii_v_digits_and_dots_without_a_trailing_newline() -> None:
    from console.core.config import VERSION_RE

    assert VERSION_RE.match("v0.2.0") and VERSION_RE.match("v10.20.30")
    for bad in ("v0.2.0\n", "v٥.0.0", "v1.0." + "0" * 64, "0.2.0", "v0.2", "v0.2.0 ", "v0.2.0\x00"):
        assert not VERSION_RE.match(bad), bad


def test_one_range_rule_for_numbers_from_the_file_and_the_environment(tmp_path) -> None:
    import pytest

    from console.core.config import ConfigError, load_config

    toml = tmp_path / "canary.toml"
    for body, where, name in [("[metrics]\nmin_requests = -5\n", str(toml), "[metrics] min_requests"),
                              ("[health]\ntimeout = 0\n", str(toml), "[health] timeout"),
                              ("[gates]\nerror_rate = nan\n", str(toml), "[gates] error_rate"),
                              ("[analysis]\ngrid = [1.5, -2]\n", str(toml), "[analysis] grid")]:
        toml.write_text(body)
        with pytest.raises(ConfigError) as e:
            load_config(toml, environ={}, check_upstream_dir=False)
        assert where in str(e.value) and name in str(e.value) and "allowed" in str(e.value) and ">" in str(e.value)
    toml.write_text("")
    for value in ("٥", "nan", "1_0", "-1", "0"):
        with pytest.raises(ConfigError, match="environment: CANARY_CHECK_INTERVAL.*allowed: a number > 0"):
            load_config(toml, environ={"CANARY_CHECK_INTERVAL": value}, check_upstream_dir=False)
