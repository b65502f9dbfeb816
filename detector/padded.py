"""The video graph as ``torch.export`` can take it: T fixed, shorter sequences zero-padded and masked.

``torch.export`` specialises ``nn.LSTM`` on the sequence length (asked for a
dynamic T it refuses: "your code specialized it to be a constant"), so the
video program is exported at one fixed length ``T_pad`` and takes the real
length of each sequence beside it.  Padding a BiLSTM is not free: the forward
direction never sees the pad of a sequence (it comes after the real frames),
but the backward direction would start from it, and the mean over time would
count it.  :class:`PaddedSequenceModel` runs each direction of each layer as
its own one-way LSTM (the same weights): the forward one over the padded
sequence as it is; the backward one over each sequence reversed *within its
length* (the pad stays at the end), its outputs put back in time order; the
mean is taken over the real steps only.  The logits of a sequence of T <=
T_pad frames are then those of the plain model on those T frames, whatever the
pad holds (checked at export, :func:`check_padded_parity`).
"""

from __future__ import annotations

import torch
from torch import nn

from dfscan.detector.model import DeepfakeDetector

__all__ = ["PaddedSequenceModel"]


def _one_way(lstm: nn.LSTM, layer: int, suffix: str) -> nn.LSTM:
    """A one-layer, one-direction LSTM holding ``lstm``'s weights of ``layer`` (``suffix`` "" or "_reverse")."""
    hidden = lstm.hidden_size
    size_in = lstm.input_size if layer == 0 else hidden * 2
    one = nn.LSTM(size_in, hidden, num_layers=1, batch_first=True, bias=lstm.bias)
    with torch.no_grad():
        for name in ("weight_ih", "weight_hh") + (("bias_ih", "bias_hh") if lstm.bias else ()):
            getattr(one, f"{name}_l0").copy_(getattr(lstm, f"{name}_l{layer}{suffix}"))
    return one


class PaddedSequenceModel(nn.Module):
    """``model`` on (N, T_pad, 3, H, W) sequences of which the first ``lengths[n]`` frames are real."""

    def __init__(self, model: DeepfakeDetector) -> None:
        super().__init__()
        lstm = model.lstm
        if not lstm.bidirectional or not lstm.batch_first or lstm.proj_size:
            raise ValueError("PaddedSequenceModel takes the detector's batch-first bidirectional LSTM")
        self.backbone = model.backbone
        self.forward_layers = nn.ModuleList(_one_way(lstm, k, "") for k in range(lstm.num_layers))
        self.backward_layers = nn.ModuleList(_one_way(lstm, k, "_reverse") for k in range(lstm.num_layers))
        self.classifier = model.classifier
        self.config = model.config
        self.eval()

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        n, t_pad = x.shape[0], x.shape[1]
        seq = self.backbone(x.flatten(0, 1)).view(n, t_pad, -1)  # (N, T_pad, F)
        steps = torch.arange(t_pad, device=x.device).unsqueeze(0)  # (1, T_pad)
        lengths = lengths.to(x.device).long().view(n, 1)
        real = steps < lengths  # (N, T_pad)
        # Within its length a sequence is read backwards; the pad stays where it is (an involution).
        order = torch.where(real, lengths - 1 - steps, steps).unsqueeze(-1)  # (N, T_pad, 1)
        h = seq
        for fwd, bwd in zip(self.forward_layers, self.backward_layers):
            ahead, _ = fwd(h)
            back, _ = bwd(torch.gather(h, 1, order.expand(-1, -1, h.shape[-1])))
            back = torch.gather(back, 1, order.expand(-1, -1, back.shape[-1]))
            h = torch.cat([ahead, back], dim=-1)
        weight = real.unsqueeze(-1).to(h.dtype)
        pooled = (h * weight).sum(dim=1) / lengths.clamp(min=1).to(h.dtype)
        return self.classifier(pooled)
