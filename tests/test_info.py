"""``adact info``: the facts a bug report needs, each on its own line."""

from __future__ import annotations

import re

import pytest

from adact.cli import main
from adact.fused import dispatch, native


def test_info_names_versions_isa_build_and_backends(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    rows = dict(re.split(r"\s{2,}", line, maxsplit=1) for line in out.splitlines())  # label, padding, value
    assert rows["adact"] == "0.1.0" and rows["torch"].startswith("2.")
    assert rows["ISA level"].startswith(native.detect_isa())
    assert rows["native build"].startswith(("ok: ", "FAILED: "))
    if rows["native build"].startswith("ok"):
        assert "-O3" in rows["native build"] and rows["native library"].endswith(".so")
    for dtype in ("float32", "bfloat16", "float16", "float64"):
        backend = rows[f"backend cpu {dtype}"].split(":")[0]
        assert backend in ("native", "compile", "eager")
    assert rows["backend cpu float64"].startswith("eager")


def test_info_follows_the_backend_switch(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(dispatch.ENV_VAR, "off")
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    backends = [line for line in out.splitlines() if line.startswith("backend cpu")]
    assert len(backends) == 4 and all("reference: ADACT_FUSED=off" in line for line in backends)
    assert "calibration" not in out  # only auto calibrates


def test_info_reports_a_failed_native_build(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    def no_native(isa: str | None = None) -> native.NativeKernels:
        raise native.NativeBuildError("no C++ compiler found (set CXX, or install g++ or clang++)")

    monkeypatch.setattr(native, "native_kernels", no_native)
    dispatch.reset_kernels()
    try:
        assert main(["info"]) == 0
    finally:
        dispatch.reset_kernels()
    out = capsys.readouterr().out
    assert "FAILED: no C++ compiler found" in out
    assert "backend cpu float32   compile: the native build failed: no C++ compiler found" in out
