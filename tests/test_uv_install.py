"""scripts/uv_install.py: pip's settings carried over to uv (so uv installs what pip would, from the same indexes
and find-links), and anything it cannot carry over sends the Makefile back to pip."""

from __future__ import annotations

import os
import sys

import pytest

import uv_install  # scripts/ (pytest.ini pythonpath)


def test_pip_settings_read_files_and_variables_with_variables_winning(tmp_path, monkeypatch):
    conf = tmp_path / "pip.conf"
    conf.write_text("[global]\nextra-index-url = file:///a/simple file:///b/simple\nfind-links = /from-file\n"
                    "[install]\nconstraint = /c.txt\n[freeze]\nfind-links = /not-for-install\n")
    monkeypatch.setenv("PIP_CONFIG_FILE", str(conf))
    monkeypatch.setenv("PIP_FIND_LINKS", "/wheels")
    settings = uv_install.pip_settings(sys.executable)
    assert settings["find-links"] == "/wheels"  # PIP_* beats the files, as in pip
    assert settings["extra-index-url"] == "file:///a/simple file:///b/simple"
    assert settings["constraint"] == "/c.txt"


def test_the_settings_that_choose_packages_become_uv_flags():
    args, env = uv_install.uv_arguments({
        "index-url": "https://idx/simple", "extra-index-url": "file:///a/simple file:///b/simple",
        "find-links": "/wheels", "constraint": "/etc/c.txt", "cert": "/etc/ca.crt", "default-timeout": "180"})
    assert args == ["--index-url", "https://idx/simple", "--extra-index-url", "file:///a/simple",
                    "--extra-index-url", "file:///b/simple", "--find-links", "/wheels", "--constraint", "/etc/c.txt"]
    assert env == {"SSL_CERT_FILE": "/etc/ca.crt"}
    assert uv_install.uv_arguments({"no-index": "true"})[0] == ["--no-index"]


@pytest.mark.parametrize("setting", [{"pre": "1"}, {"only-binary": ":all:"}, {"trusted-host": "mirror"}])
def test_a_setting_it_cannot_carry_over_falls_back_to_pip(setting):
    with pytest.raises(uv_install.Untranslatable):
        uv_install.uv_arguments(setting)


def test_main_exits_non_zero_before_installing_anything_on_such_a_setting(monkeypatch, capsys):
    monkeypatch.setenv("PIP_PRE", "1")
    monkeypatch.delenv("PIP_CONFIG_FILE", raising=False)
    assert uv_install.main(["-r", os.devnull]) == 3
    assert "installing with pip instead" in capsys.readouterr().err


def test_uv_is_pinned_where_the_install_reads_it():
    pin = uv_install.uv_pin()
    assert pin.startswith("uv==") and pin in (uv_install.ROOT / "requirements-test.txt").read_text()
