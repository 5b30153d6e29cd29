"""A quiet start on machines without a GPU; real errors still shown."""

import pytest

from cityscapes_unet.startup import has_gpu_device, keep_line
from conftest import run_main


def test_probe_lines_are_dropped_and_other_lines_kept():
    assert not keep_line(
        "E0000 00:00:1.0  1 cuda_platform.cc:52] failed call to cuInit: INTERNAL: CUDA error\n"
    )
    assert not keep_line(
        "I0000 00:00:1.0  1 cudart_stub.cc:31] Could not find cuda drivers on your machine\n"
    )
    assert keep_line("E0000 00:00:1.0  1 some_op.cc:10] Out of memory while allocating\n")
    assert keep_line("error: --model m.keras: file not found\n")


@pytest.mark.skipif(has_gpu_device(), reason="the probe's lines are kept where a GPU is")
@pytest.mark.slow
def test_a_bad_model_prints_one_line_and_no_probe(tmp_path):
    r = run_main("evaluate", "--model", tmp_path / "missing.keras")
    assert r.returncode == 2
    assert r.stderr.splitlines() == [f"error: --model {tmp_path / 'missing.keras'}: file not found"]
