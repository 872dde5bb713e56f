"""ModelRunner: turns one step's sequences into packed tensors and runs the model on them.

The caller (an engine loop or the simulator's compute backend) decides which sequences run,
which tokens they feed and where in the paged cache those tokens go; the runner only builds
the step metadata once and executes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from engine.model import AttentionMetadata, LlamaModel


@dataclass
class StepInput:
    """One sequence's part of a step.

    token_ids      new tokens fed this step (a prefill chunk, or one decode token)
    start_position RoPE position of the first of them (tokens are consecutive)
    slots          flat cache slot for each new token (block_id * block_size + offset)
    block_table    the sequence's physical blocks, in logical order
    seq_len        slots the sequence reads after this step's writes (cached + new)
    """

    token_ids: list[int]
    start_position: int
    slots: list[int]
    block_table: list[int]
    seq_len: int


class ModelRunner:
    def __init__(self, model: LlamaModel, kv_store, device: torch.device | str | None = None):
        self.model, self.kv_store = model, kv_store
        self.device = torch.device(device) if device is not None else model.embed_tokens.weight.device

    def prepare(self, batch: list[StepInput], score_out: list[torch.Tensor] | None = None,
                score_windows: list[int] | None = None):
        """-> (input_ids [T], AttentionMetadata, logits_indices [B]) on the runner's device."""
        lens = [len(s.token_ids) for s in batch]
        assert all(n > 0 for n in lens), "every sequence in a step feeds at least one token"
        assert all(len(s.slots) == n for s, n in zip(batch, lens)), "one slot per new token"
        max_blocks = max(len(s.block_table) for s in batch)
        tables = [s.block_table + [0] * (max_blocks - len(s.block_table)) for s in batch]
        cu = [0]
        for n in lens:
            cu.append(cu[-1] + n)

        def tensor(values, dtype=torch.int64):
            return torch.tensor(values, dtype=dtype, device=self.device)

        meta = AttentionMetadata(
            positions=tensor([p for s in batch for p in range(s.start_position, s.start_position + len(s.token_ids))]),
            slot_mapping=tensor([x for s in batch for x in s.slots]),
            block_tables=tensor(tables, torch.int32),
            seq_lens=tensor([s.seq_len for s in batch], torch.int32),
            cu_seqlens_q=tensor(cu, torch.int32),
            is_decode=all(n == 1 for n in lens),
            score_out=score_out,
            score_windows=tensor(score_windows) if score_windows is not None else None,
        )
        input_ids = tensor([t for s in batch for t in s.token_ids])
        return input_ids, meta, tensor([c - 1 for c in cu[1:]])

    def run(self, batch: list[StepInput], score_out: list[torch.Tensor] | None = None,
            score_windows: list[int] | None = None) -> torch.Tensor:
        """Logits [B, vocab] (float32) of each sequence's last new token. With score_out, the
        attention each slot receives is added to it (see AttentionMetadata)."""
        input_ids, meta, last = self.prepare(batch, score_out, score_windows)
        return self.model(input_ids, meta, self.kv_store, logits_indices=last)
