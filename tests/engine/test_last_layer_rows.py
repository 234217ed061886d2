"""The last layer's row subset: which rows a step keeps, and their attention layout."""
import torch

from tide.engine.models.llama import LastLayerRows
from tide.kernels.metadata import AttentionMetadata


def _metadata(query_lens: list[int], seq_lens: list[int]) -> AttentionMetadata:
    starts = [0]
    for n in query_lens:
        starts.append(starts[-1] + n)
    tables = torch.arange(len(seq_lens) * 4, dtype=torch.int32).view(len(seq_lens), 4)
    return AttentionMetadata(query_start_loc=torch.tensor(starts, dtype=torch.int32),
                             seq_lens=torch.tensor(seq_lens, dtype=torch.int32), block_tables=tables,
                             num_decodes=2, max_query_len=max(query_lens), max_seq_len=max(seq_lens),
                             query_lens_host=query_lens, seq_lens_host=seq_lens)


def test_kept_rows_are_each_sequences_last_ones():
    # two decodes, a prefill chunk that samples, one that does not, a decode verifying two draft tokens
    attn = _metadata([1, 1, 5, 4, 3], [9, 30, 5, 40, 12])
    rows = LastLayerRows.of(attn, [1, 1, 1, 0, 3])
    assert rows.index.tolist() == [0, 1, 6, 11, 12, 13]
    kept = rows.attn
    assert kept.query_lens_host == [1, 1, 1, 3] and kept.query_start_loc.tolist() == [0, 1, 2, 3, 6]
    assert kept.seq_lens_host == [9, 30, 5, 12] and kept.seq_lens.tolist() == [9, 30, 5, 12]
    assert kept.block_tables.tolist() == attn.block_tables[[0, 1, 2, 4]].tolist()  # the idle chunk's row is gone
    assert (kept.num_decodes, kept.max_query_len, kept.max_seq_len) == (3, 3, 30)
