"""`hungryserv check-config`: every problem reported at once, exit code 64."""

import re
import subprocess

import stack

EX_CONFIG = 64


def check_config(path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [stack.HUNGRYSERV_BIN, "check-config", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=30,
    )


def mentions_any(text: str, *needles: str) -> bool:
    return any(n.lower() in text.lower() for n in needles)


def test_valid_configs_pass():
    # The running suite's own config, and the annotated example in deploy/.
    for path in [stack.HUNGRYSERV_CONFIG, stack.REPO / "deploy" / "hungryserv.toml"]:
        result = check_config(path)
        assert result.returncode == 0, (path, result.stderr)


def test_every_config_error_is_listed(tmp_path):
    config = tmp_path / "hungryserv.toml"
    config.write_text(
        f"""
listen = "not-an-address"
routing = "{stack.REPO / "routing.toml"}"

[synapse]
url = "http://127.0.0.1:8009/some/path"

[database]
url = "postgres://hungryserv@127.0.0.1:5439/hungryserv"

[log]
format = "fancy"
"""
    )
    result = check_config(config)
    assert result.returncode == EX_CONFIG, result
    err = result.stderr
    assert mentions_any(err, "server_name"), err
    assert mentions_any(err, "not-an-address", "listen"), err
    assert mentions_any(err, "/some/path"), err
    assert mentions_any(err, "fancy"), err


def test_every_routing_error_is_listed(tmp_path):
    routing = tmp_path / "routing.toml"
    routing.write_text(
        """
[[class]]
name = "bridge"
prefix = "hs_"
serve = "local"
create = "local"
[class.match]
unfederated = true

[[class]]
name = "twin"
prefix = "hs_"
serve = "local"
create = "local"
[class.match]
appservices = ["example-bridge"]

[[class]]
name = "letters"
prefix = "abc"
serve = "local"
create = "synapse"
[class.match]
all = true
"""
    )
    config = tmp_path / "hungryserv.toml"
    # The suite's valid config, pointed at the broken routing file.
    config.write_text(
        "\n".join(
            f'routing = "{routing}"' if line.startswith("routing = ") else line
            for line in stack.HUNGRYSERV_CONFIG.read_text().splitlines()
        )
    )
    result = check_config(config)
    assert result.returncode == EX_CONFIG, result
    err = result.stderr
    assert mentions_any(err, "duplicate", "hs_"), err
    assert re.search(r"\babc\b|letter", err, re.IGNORECASE), err
