"""BM3D (Dabov et al. 2007) as an evaluation-only baseline, through the ``bm3d`` package.

Non-blind: every image is denoised with its true sigma (``sigma_psd = sigma / 255`` on [0, 1]
images), the usual way BM3D rows are reported. ``bm3d.bm3d`` with its default profile
(``"np"``) and ``stage_arg=BM3DStages.ALL_STAGES`` (hard thresholding then Wiener filtering).
"""

from __future__ import annotations

import numpy as np
import torch

from odelab.modules.restoration import RestorationModule


class BM3DBaseline(RestorationModule):
    """Evaluate BM3D on the restoration test cells (no parameters, no training)."""

    grid_key = "images/test_bm3d"

    def __init__(self, profile: str = "np", optimizer=None, scheduler=None):
        super().__init__()  # optimizer/scheduler: composed by the config groups, unused
        self.profile = profile
        try:
            import bm3d  # noqa: F401
        except ImportError as e:
            raise ImportError("the bm3d_denoise experiment needs `pip install bm3d`") from e

    def restore(self, y: torch.Tensor, level: torch.Tensor) -> tuple[torch.Tensor, dict]:
        import bm3d

        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if getattr(dm, "task", "denoise") != "denoise":
            raise ValueError("BM3D is a Gaussian denoiser: use it with data.task=denoise")
        out = []
        for b in range(y.shape[0]):
            z = y[b, 0].detach().cpu().double().numpy()
            sigma = float(level[b]) / 255.0
            est = bm3d.bm3d(z, sigma_psd=sigma, profile=self.profile)
            out.append(torch.from_numpy(np.asarray(est, dtype=np.float32)).view(1, *z.shape))
        return torch.stack(out).to(y.device), {}

    def training_step(self, batch, batch_idx):  # pragma: no cover - evaluation only
        raise RuntimeError("BM3D has nothing to train: run bm3d_denoise with train=false")

    def configure_optimizers(self):
        return None
