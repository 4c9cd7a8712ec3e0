"""``adact info``: the facts a bug report needs, each on its own line."""

from __future__ import annotations

import re

import pytest
import torch

from adact import AdAct
from adact.cli import main
from adact.fused import compiled, dispatch, native


def info_rows(capsys: pytest.CaptureFixture[str]) -> dict[str, str]:
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    return dict(re.split(r"\s{2,}", line, maxsplit=1) for line in out.splitlines())  # label, padding, value


def test_info_names_versions_isa_build_and_backends(capsys: pytest.CaptureFixture[str]) -> None:
    rows = info_rows(capsys)
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


def test_info_names_a_bad_isa_setting(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(native.ISA_ENV_VAR, "pentium")
    assert main(["info"]) == 2
    assert "ADACT_NATIVE_ISA='pentium' is not one of native, x86-64-v4" in capsys.readouterr().err


def _no_native(isa: str | None = None) -> native.NativeKernels:
    raise native.NativeBuildError("no C++ compiler found")


def _broken_compile(key: dispatch.FusedKernelKey) -> object:
    def kernel(*args: object) -> object:
        raise RuntimeError("no C++ compiler")

    return kernel


@pytest.mark.parametrize("setting", dispatch.BACKENDS)
def test_info_backends_are_the_dispatchers_choices(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, setting: str
) -> None:
    monkeypatch.setenv(dispatch.ENV_VAR, setting)
    rows = info_rows(capsys)
    for dtype in (torch.float32, torch.bfloat16, torch.float16, torch.float64):
        backend, why = dispatch.explain("cpu", dtype)
        assert rows[f"backend cpu {str(dtype).split('.')[-1]}"] == f"{backend}: {why}"


def test_info_follows_a_compile_failure_at_first_use(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """auto, no native build, then Inductor failing at the first call: info reports the eager fallback that ran."""
    monkeypatch.setattr(native, "native_kernels", _no_native)
    monkeypatch.setattr(compiled, "_compile", _broken_compile)
    dispatch.reset_kernels()
    try:
        assert info_rows(capsys)["backend cpu bfloat16"] == "compile: Inductor (C++)"
        with pytest.warns(RuntimeWarning, match="eager fused kernels"):
            AdAct().train()(torch.randn(2, 3, dtype=torch.bfloat16))
        rows = info_rows(capsys)
    finally:
        dispatch.reset_kernels()
    assert rows["backend cpu bfloat16"].startswith("eager: compiling failed earlier in this process (RuntimeError")
    assert rows["backend cpu float32"] == "compile: the native build failed: no C++ compiler found"
