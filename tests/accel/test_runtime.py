"""pvt.accel.runtime: the tuned C allocator stops a forward pass from touching new memory pages."""

import subprocess
import sys

import pytest

from pvt.accel import runtime

_PROBE = """
import sys, torch
from pvt.accel.runtime import allocator_mode, configure_allocator, page_faults
mode = configure_allocator(sys.argv[1])
import pvt
torch.set_num_threads(1)
m = pvt.create_model("pvt_v2_b0", accelerate=True).eval()
x = torch.randn(2, 3, 224, 224)
with torch.inference_mode():
    for _ in range(3):
        m(x)
    faults = []
    for _ in range(3):
        f0 = page_faults()
        m(x)
        faults.append(page_faults() - f0)
print(mode, min(faults))
"""

glibc = pytest.mark.skipif(runtime._glibc() is None, reason="mallopt needs glibc")


def _faults(mode: str) -> tuple[str, int]:
    out = subprocess.run([sys.executable, "-c", _PROBE, mode], capture_output=True, text=True, check=True)
    got, faults = out.stdout.split()
    return got, int(faults)


@glibc
def test_tuned_allocator_removes_page_faults_of_a_forward():
    # glibc's defaults: a PVTv2-B0 batch of 2 at 224 px touches hundreds to thousands of new pages
    # per call, depending on the machine; tuned, none after the first calls
    mode, default_faults = _faults("default")
    assert mode == "default" and default_faults > 300
    mode, tuned_faults = _faults("tuned")
    assert mode == "tuned" and tuned_faults < 50 and tuned_faults * 10 < default_faults


def test_configure_allocator_names_the_accepted_modes(monkeypatch):
    monkeypatch.setenv("PVT_ALLOCATOR", "jemalloc")
    with pytest.raises(ValueError, match="PVT_ALLOCATOR='jemalloc'.*tuned, default"):
        runtime.configure_allocator()
    with pytest.raises(ValueError, match="mode='fast'"):
        runtime.configure_allocator("fast")
    monkeypatch.setenv("PVT_ALLOCATOR", "default")
    assert runtime.configure_allocator() == runtime.allocator_mode()


def test_page_faults_counts_new_pages():
    import mmap

    size = 16 * 2**20
    with mmap.mmap(-1, size) as buf:  # fresh anonymous pages, whatever malloc keeps
        before = runtime.page_faults()
        for offset in range(0, size, 4096):
            buf[offset] = 1
        touched = runtime.page_faults() - before
    page = 4096
    try:  # transparent huge pages "always": one fault per 2 MiB
        with open("/sys/kernel/mm/transparent_hugepage/enabled") as f:
            page = 2 * 2**20 if "[always]" in f.read() else page
    except OSError:
        pass
    assert size // page // 2 <= touched <= 2 * size // 4096
