"""Loss-scale balancing (``KD.BALANCE``): each distillation loss's weight set from the run itself.

A weight tuned in a paper or another code base means something else here (other sums and means,
other feature scales), and a term that outweighs the detector's own losses makes training
diverge. With balancing on, each balanced loss is first *measured* for ``ITERS`` iterations in
which it acts (its terms are computed but zeroed), then *held* at the scale that makes it
``RATIO`` times the detector's own losses over those same iterations:

    scale = RATIO * mean(detector loss) / mean(loss at its configured weight)

so the configured weight only sets the starting point of the measurement, never the outcome.
The scale is computed from detached values (no gradient flows through it), reduced over all
processes, kept in the checkpoint (a resumed run keeps it), logged once and recorded in the
metrics as ``kd_balance/<loss>``.
"""

import logging
import zlib
from typing import Dict, Sequence

import torch
import torch.distributed as dist
from torch import nn

from detectron2.utils.events import get_event_storage

__all__ = ["LossBalancer"]

logger = logging.getLogger(__name__)


class LossBalancer(nn.Module):
    def __init__(self, losses: Sequence[str], ratio: float, iters: int):
        """
        Args:
            losses: names (keys of the model's ``kd_losses``) of the losses to balance.
            ratio: each balanced loss's target size, as a fraction of the detector's own losses.
            iters: how many iterations each loss is measured for before its scale is held.
        """
        super().__init__()
        if ratio <= 0 or iters < 1:
            raise ValueError(f"KD.BALANCE needs RATIO > 0 and ITERS >= 1 (got {ratio} and {iters}).")
        self.losses = list(losses)
        self.ratio = ratio
        self.iters = iters
        n = len(self.losses)
        # Sums over each loss's measured iterations; persistent, so that --resume holds the scale.
        self.register_buffer("detector_sum", torch.zeros(n, dtype=torch.float64))
        self.register_buffer("loss_sum", torch.zeros(n, dtype=torch.float64))
        self.register_buffer("measured", torch.zeros(n, dtype=torch.long))
        self.register_buffer("scale", torch.zeros(n, dtype=torch.float64))
        # Which losses and settings the scales are for, as a number a checkpoint can hold.
        fingerprint = zlib.crc32(repr((self.losses, float(ratio), int(iters))).encode())
        self.register_buffer("settings", torch.tensor([fingerprint], dtype=torch.long))

    def forward(
        self, detector_loss: torch.Tensor, terms_by_loss: Dict[str, Dict[str, torch.Tensor]]
    ) -> Dict[str, Dict[str, torch.Tensor]]:
        """The terms of every loss, those of the balanced ones zeroed while measured and scaled after.

        Args:
            detector_loss: the sum of the student's own losses this iteration.
            terms_by_loss: per loss name, the dict of ``loss_kd_*`` terms it returned.
        """
        out = dict(terms_by_loss)
        for i, name in enumerate(self.losses):
            terms = terms_by_loss[name]
            if self.measured[i] < self.iters:
                self._measure(i, detector_loss, sum(terms.values()))
                # Zeroed, not dropped, so that DDP sees every adapter used; a non-finite term stays out.
                out[name] = {k: torch.where(torch.isfinite(v), v * 0.0, torch.zeros_like(v)) for k, v in terms.items()}
            else:
                out[name] = {k: v * self.scale[i].to(v.dtype) for k, v in terms.items()}
                get_event_storage().put_scalar(f"kd_balance/{name}", float(self.scale[i]), smoothing_hint=False)
        return out

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # Scales saved for other losses or settings (another KD.LOSSES order, a fine-tune from a run
        # balanced otherwise) are not this run's: keep this run's empty ones and measure again.
        saved = state_dict.get(prefix + "settings")
        if saved is not None and not torch.equal(saved, self.settings):
            for name, buffer in self.named_buffers():
                state_dict[prefix + name] = buffer.detach().clone()
            logger.info("KD.BALANCE: the checkpoint's scales were set for other losses or settings; measuring again.")
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    @torch.no_grad()
    def _measure(self, i: int, detector_loss: torch.Tensor, loss: torch.Tensor) -> None:
        """Count the iteration towards loss ``i``'s measurement if the loss acts in it (a loss in its
        own warm-up returns 0 and is measured once it starts), and set its scale after the last one."""
        # A loss in its own warm-up returns 0; a non-finite iteration would poison the means.
        usable = loss.detach() != 0 and torch.isfinite(loss.detach()) and torch.isfinite(detector_loss.detach())
        acts = torch.tensor([float(usable)], dtype=torch.float64, device=self.scale.device)
        sums = torch.stack([acts[0], detector_loss.detach().double() * acts[0], loss.detach().double() * acts[0]])
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(sums)  # every process measures the whole batch, and all reach one scale
            acts_anywhere = sums[0] > 0
        else:
            acts_anywhere = acts[0] > 0
        if not acts_anywhere:
            return
        self.measured[i] += 1
        self.detector_sum[i] += sums[1] / sums[0]
        self.loss_sum[i] += sums[2] / sums[0]
        if self.measured[i] == self.iters:
            self.scale[i] = self.ratio * self.detector_sum[i] / self.loss_sum[i].clamp(min=1e-12)
            logger.info(
                "KD.BALANCE: %s held at x%.4g of its configured weight: its terms averaged %.4g against the "
                "detector's %.4g over %d iterations, now %.3g of them.",
                self.losses[i],
                float(self.scale[i]),
                float(self.loss_sum[i] / self.iters),
                float(self.detector_sum[i] / self.iters),
                self.iters,
                self.ratio,
            )
