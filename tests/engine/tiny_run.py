"""A run small enough to repeat many times in a test: a narrow PVT v2 (registered only while a test uses
it) on a few 32x32 stripe images, one torch thread, no loader processes. Imported by the engine tests and
by ``fault_driver.py``."""

from __future__ import annotations

from pvt.models.config import PVTConfig
from pvt.models.variants import VARIANTS, Variant

TINY = "pvt_fault_tiny"
TINY_VARIANT = Variant(TINY, PVTConfig(embed_dims=(8, 16, 24, 32), depths=(1, 1, 1, 1), num_heads=(1, 1, 1, 2),
                                       mlp_ratios=(2, 2, 2, 2)), 0, VARIANTS["pvt_v2_b0"].paper, 0.0, None)
# on make_stripes(n_train=4, n_val=2) this seed makes epoch 1 the best, epoch 2 tie it (so it is not best)
# and epoch 3 beat it: best.safetensors is written twice
ARGS = dict(epochs=3, batch_size=4, workers=0, threads=1, aa="none", img_size=32, model=TINY,
            warmup_epochs=1.0, lr=5e-3, seed=4, repeated_aug=False, quiet=True)
