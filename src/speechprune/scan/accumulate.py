"""The one pairwise accumulator: token-weighted float64 sums of angular distance and cosine between
every pair of residual-stream states (x_i, x_j), 0 <= i < j <= L, per region.

Every scan (speech input, text input, a plain LLM, every region) goes through ``PairwiseStats``.
Per batch it takes the captured states ``[L+1, N, H]`` of the counted positions and gets all
(L+1)x(L+1) inner products of a position with one batched matmul (in float64, in chunks of
positions so the extra memory stays bounded); each state's norm comes from the Gram diagonal, so
every state is normalised once, and the cosines follow, and adds masked sums per region. Means are
taken once, at the end, from the summed totals (sum / count), after an all-reduce across processes.
For the regions named in ``per_utterance`` it also keeps each utterance's sums (float32), which is
what the bootstrap in :mod:`speechprune.scan.stability` resamples.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch


def pair_index(num_layers: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Row and column of every pair (i, j), i < j, of the (L+1)x(L+1) matrix, in triu order."""
    return torch.triu_indices(num_layers + 1, num_layers + 1, offset=1)


def to_matrix(pair_values: np.ndarray, num_layers: int) -> np.ndarray:
    """Upper-triangle values [P] -> symmetric (L+1)x(L+1) matrix with a zero diagonal."""
    rows, cols = (index.numpy() for index in pair_index(num_layers))
    matrix = np.zeros((num_layers + 1, num_layers + 1), dtype=np.float64)
    matrix[rows, cols] = pair_values
    matrix[cols, rows] = pair_values
    return matrix


class PairwiseStats:
    """Float64 sums of arccos(cos)/pi and of cos for every layer pair, with counts, per region."""

    def __init__(self, num_layers: int, regions: Sequence[str], per_utterance: Sequence[str] = (),
                 chunk_bytes: int = 8 << 20):
        unknown = [name for name in per_utterance if name not in regions]
        if unknown:
            raise ValueError(f"per-utterance regions {unknown} are not among the scanned regions {list(regions)}")
        self.num_layers = num_layers
        self.regions = list(regions)
        self.per_utterance = list(per_utterance)
        self.chunk_bytes = chunk_bytes
        self.num_pairs = (num_layers + 1) * num_layers // 2
        self._rows, self._cols = pair_index(num_layers)
        self._flat = self._rows * (num_layers + 1) + self._cols
        shape = (len(self.regions), self.num_pairs)
        self.angular_sum = torch.zeros(shape, dtype=torch.float64)
        self.cosine_sum = torch.zeros(shape, dtype=torch.float64)
        self.count = torch.zeros(len(self.regions), dtype=torch.int64)
        # per-utterance sums: region -> lists of per-batch tensors (concatenated on demand)
        self._utt_index: list[torch.Tensor] = []
        self._utt_angular: dict[str, list[torch.Tensor]] = {name: [] for name in self.per_utterance}
        self._utt_count: dict[str, list[torch.Tensor]] = {name: [] for name in self.per_utterance}

    # accumulation ------------------------------------------------------------------------------
    @torch.no_grad()
    def add(self, states: torch.Tensor, masks: torch.Tensor, rows: torch.Tensor | None = None,
            utterances: torch.Tensor | None = None) -> None:
        """Add one batch.

        states: [L+1, N, H] the counted positions' x_0..x_L (any float dtype, any device).
        masks: [R, N] bool, which positions belong to each region (same order as ``regions``).
        rows: [N] long, the batch row of each position; utterances: [B] long, each row's global
        utterance index. Both are needed only when per-utterance sums are kept.
        """
        width, n, hidden = states.shape
        if width != self.num_layers + 1:
            raise ValueError(f"states hold {width} layers of residual stream, expected {self.num_layers + 1}")
        if masks.shape != (len(self.regions), n):
            raise ValueError(f"masks must be [{len(self.regions)}, {n}], not {list(masks.shape)}")
        device = states.device
        if self.angular_sum.device != device:
            self._move(device)
        pair_rows, pair_cols, pair_flat = self._rows.to(device), self._cols.to(device), self._flat.to(device)
        masks = masks.to(device)
        self.count += masks.sum(dim=1).to(self.count.device)
        keep_utt = bool(self.per_utterance)
        if keep_utt:
            if rows is None or utterances is None:
                raise ValueError("per-utterance sums need the rows and utterance indices of the batch")
            rows = rows.to(device)
            batch = int(utterances.numel())
            utt_ang = torch.zeros(len(self.per_utterance), batch, self.num_pairs, dtype=torch.float64, device=device)
            utt_cnt = torch.zeros(len(self.per_utterance), batch, dtype=torch.int64, device=device)
            utt_slots = [self.regions.index(name) for name in self.per_utterance]
        step = max(1, self.chunk_bytes // (width * hidden * 8))
        for start in range(0, n, step):
            stop = min(n, start + step)
            x = states[:, start:stop].transpose(0, 1).to(torch.float64, memory_format=torch.contiguous_format)
            gram = torch.bmm(x, x.transpose(1, 2))  # [c, L+1, L+1] inner products
            del x
            inv_norm = torch.diagonal(gram, dim1=1, dim2=2).sqrt().clamp_min(1e-300).reciprocal()  # [c, L+1]
            cos = gram.reshape(stop - start, -1).index_select(1, pair_flat)  # [c, P]
            del gram
            cos.mul_(inv_norm[:, pair_rows]).mul_(inv_norm[:, pair_cols]).clamp_(-1.0, 1.0)
            ang = torch.arccos(cos).div_(math.pi)
            weight = masks[:, start:stop].to(torch.float64)  # [R, c]
            self.angular_sum += weight @ ang
            self.cosine_sum += weight @ cos
            if keep_utt:
                onehot = torch.zeros(stop - start, batch, dtype=torch.float64, device=device)
                onehot[torch.arange(stop - start, device=device), rows[start:stop]] = 1.0
                for k, slot in enumerate(utt_slots):
                    member = onehot * weight[slot].unsqueeze(1)  # [c, B]
                    utt_ang[k] += member.T @ ang
                    utt_cnt[k] += member.sum(dim=0).round().to(torch.int64)
        if keep_utt:
            self._utt_index.append(utterances.detach().to("cpu", torch.int64).clone())
            for k, name in enumerate(self.per_utterance):
                self._utt_angular[name].append(utt_ang[k].to("cpu", torch.float32))
                self._utt_count[name].append(utt_cnt[k].cpu())

    def _move(self, device: torch.device) -> None:
        self.angular_sum = self.angular_sum.to(device)
        self.cosine_sum = self.cosine_sum.to(device)
        self.count = self.count.to(device)

    # results -----------------------------------------------------------------------------------
    def matrices(self, region: str) -> dict:
        """Means for one region: (L+1)x(L+1) ``angular`` and ``cosine`` (None when nothing counted)."""
        slot = self.regions.index(region)
        count = int(self.count[slot])
        if count == 0:
            return {"angular": None, "cosine": None, "count": 0}
        angular = (self.angular_sum[slot] / count).cpu().numpy()
        cosine = (self.cosine_sum[slot] / count).cpu().numpy()
        cosine_matrix = to_matrix(cosine, self.num_layers)
        np.fill_diagonal(cosine_matrix, 1.0)
        return {"angular": to_matrix(angular, self.num_layers), "cosine": cosine_matrix, "count": count}

    def utterance_sums(self, region: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(global utterance index [U], angular sums [U, P], counts [U]), sorted by utterance index."""
        if region not in self.per_utterance:
            raise KeyError(f"no per-utterance sums were kept for region {region!r}")
        index = torch.cat(self._utt_index) if self._utt_index else torch.zeros(0, dtype=torch.int64)
        angular = (torch.cat(self._utt_angular[region]) if self._utt_angular[region]
                   else torch.zeros(0, self.num_pairs))
        count = torch.cat(self._utt_count[region]) if self._utt_count[region] else torch.zeros(0, dtype=torch.int64)
        order = torch.argsort(index, stable=True)
        return index[order].numpy(), angular[order].double().numpy(), count[order].numpy()

    # checkpoint and reduction ------------------------------------------------------------------
    def state_dict(self) -> dict:
        self._compact()
        return {
            "num_layers": self.num_layers,
            "regions": list(self.regions),
            "per_utterance": list(self.per_utterance),
            "angular_sum": self.angular_sum.cpu().clone(),
            "cosine_sum": self.cosine_sum.cpu().clone(),
            "count": self.count.cpu().clone(),
            "utt_index": [t.clone() for t in self._utt_index],
            "utt_angular": {k: [t.clone() for t in v] for k, v in self._utt_angular.items()},
            "utt_count": {k: [t.clone() for t in v] for k, v in self._utt_count.items()},
        }

    def load_state_dict(self, state: dict) -> None:
        if (state["num_layers"], state["regions"], state["per_utterance"]) != (
                self.num_layers, self.regions, self.per_utterance):
            raise ValueError("checkpointed statistics were made with other layers or regions")
        device = self.angular_sum.device
        self.angular_sum = state["angular_sum"].to(device)
        self.cosine_sum = state["cosine_sum"].to(device)
        self.count = state["count"].to(device)
        self._utt_index = list(state["utt_index"])
        self._utt_angular = {k: list(v) for k, v in state["utt_angular"].items()}
        self._utt_count = {k: list(v) for k, v in state["utt_count"].items()}

    def _compact(self) -> None:
        """Merge the per-batch lists into one tensor each (same values, same order)."""
        if len(self._utt_index) > 1:
            self._utt_index = [torch.cat(self._utt_index)]
            for name in self.per_utterance:
                self._utt_angular[name] = [torch.cat(self._utt_angular[name])]
                self._utt_count[name] = [torch.cat(self._utt_count[name])]

    def all_reduce(self) -> None:
        """Sum the totals over all processes (once, at the end) and gather per-utterance sums.

        A no-op in a single process. Uses Accelerate's collective helpers, so it works for any
        backend Accelerate set up (gloo on CPU, NCCL on GPUs).
        """
        from accelerate import PartialState
        from accelerate.utils import gather, pad_across_processes, reduce

        state = PartialState()
        if state.num_processes <= 1:
            return
        device = state.device
        self.angular_sum = reduce(self.angular_sum.to(device), reduction="sum")
        self.cosine_sum = reduce(self.cosine_sum.to(device), reduction="sum")
        self.count = reduce(self.count.to(device), reduction="sum")
        if not self.per_utterance:
            return
        self._compact()
        index = self._utt_index[0] if self._utt_index else torch.zeros(0, dtype=torch.int64)
        # pad every process's rows to the same length (index -1 marks padding), then gather
        index = pad_across_processes(index.to(device) + 1, dim=0, pad_index=0)
        gathered_index = gather(index).cpu() - 1
        keep = gathered_index >= 0
        self._utt_index = [gathered_index[keep]]
        for name in self.per_utterance:
            ang = self._utt_angular[name][0] if self._utt_angular[name] else torch.zeros(0, self.num_pairs)
            cnt = self._utt_count[name][0] if self._utt_count[name] else torch.zeros(0, dtype=torch.int64)
            ang = gather(pad_across_processes(ang.to(device), dim=0)).cpu()
            cnt = gather(pad_across_processes(cnt.to(device), dim=0)).cpu()
            self._utt_angular[name] = [ang[keep]]
            self._utt_count[name] = [cnt[keep]]
