"""Text-to-semantic GPT of GPT-SoVITS v1/v2 (upstream ``Text2SemanticDecoder``), with an explicit KV cache.

Sequence layout of one row: ``[text phones (bidirectional) | semantic tokens (causal)]``.  Text
rows attend to all text and no audio; audio rows attend to all text and to earlier (and their
own) audio positions: a prefix-LM.  Text and audio each have their own sinusoidal positions
starting at 0, scaled by a learned ``alpha``.  The transformer is post-LN (``x = LN(x + SA(x));
x = LN(x + FFN(x))``) with a ReLU FFN of 4 x hidden and no final norm.

Inference never uses hooks or hidden state: :meth:`prefill` returns the per-layer keys/values of a
batch of rows (each with its own text and prompt length) and :meth:`decode_step` takes a cache plus
per-row lengths/positions and returns the logits and the *new* keys/values, which the caller
writes into its cache.  Both are plain tensor functions, so the same code runs eagerly, under ONNX
export and under TensorRT.

Parameter names equal upstream's state-dict keys without the ``model.`` prefix.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from gsv.models.config import GPTConfig

PE_TABLE_SIZE = 4000  # positions precomputed (upstream also starts with 4000); extended on demand eagerly


def sine_table(n_positions: int, dim: int) -> torch.Tensor:
    """Sinusoidal table [n_positions, dim]: even dims sin, odd dims cos, base 10000 (float32 maths as upstream)."""
    position = torch.arange(0, n_positions, dtype=torch.float32).unsqueeze(1)
    div_term = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * -(math.log(10000.0) / dim))
    pe = torch.zeros(n_positions, dim)
    pe[:, 0::2] = torch.sin(position * div_term)
    pe[:, 1::2] = torch.cos(position * div_term)
    return pe


class TokenEmbedding(nn.Module):
    """Embedding table kept under upstream's name ``word_embeddings``."""

    def __init__(self, vocab: int, dim: int):
        super().__init__()
        self.word_embeddings = nn.Embedding(vocab, dim)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.word_embeddings(ids)


class SinePositions(nn.Module):
    """``x + alpha * pe[position]`` (upstream SinePositionalEmbedding with scale=False, alpha=True)."""

    def __init__(self, dim: int, dropout: float):
        super().__init__()
        self.dim = dim
        self.alpha = nn.Parameter(torch.ones(1))
        self.dropout = nn.Dropout(dropout)
        self.register_buffer("pe", sine_table(PE_TABLE_SIZE, dim), persistent=False)

    def _table(self, needed: int) -> torch.Tensor:
        if needed > self.pe.shape[0] and not torch.jit.is_tracing() and not torch.onnx.is_in_onnx_export():
            self.pe = sine_table(max(needed, 2 * self.pe.shape[0]), self.dim).to(self.pe.device)
        return self.pe

    def forward(self, x: torch.Tensor, positions: torch.Tensor | None = None) -> torch.Tensor:
        """x: [B, T, D]; positions: [B, T] int64 (default 0..T-1 for every row)."""
        if positions is None:
            pe = self._table(x.shape[1])[: x.shape[1]].unsqueeze(0)  # [1, T, D]
        else:
            if not torch.jit.is_tracing() and not torch.onnx.is_in_onnx_export() and positions.numel():
                self._table(int(positions.max()) + 1)
            pe = F.embedding(positions, self.pe)  # [B, T, D]
        return self.dropout(x + self.alpha * pe.to(x.dtype))


class SelfAttention(nn.Module):
    """Packed-QKV multi-head attention with upstream's parameter names (nn.MultiheadAttention layout)."""

    def __init__(self, dim: int, n_head: int):
        super().__init__()
        self.n_head = n_head
        self.head_dim = dim // n_head
        self.in_proj_weight = nn.Parameter(torch.empty(3 * dim, dim))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * dim))
        self.out_proj = nn.Linear(dim, dim)
        nn.init.xavier_uniform_(self.in_proj_weight)

    def qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x: [..., D] -> q, k, v each [..., D] (heads not yet split, upstream's cache layout)."""
        return F.linear(x, self.in_proj_weight, self.in_proj_bias).chunk(3, dim=-1)

    def split_heads(self, t: torch.Tensor) -> torch.Tensor:
        b, n, d = t.shape
        return t.view(b, n, self.n_head, d // self.n_head).transpose(1, 2)  # [B, H, T, Dh]

    def merge_heads(self, t: torch.Tensor) -> torch.Tensor:
        b, h, n, dh = t.shape
        return t.transpose(1, 2).reshape(b, n, h * dh)  # [B, T, D]


class GPTLayer(nn.Module):
    """Post-LN transformer layer (upstream TransformerEncoderLayer, norm_first=False)."""

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        d = cfg.hidden_dim
        self.self_attn = SelfAttention(d, cfg.n_head)
        self.linear1 = nn.Linear(d, cfg.ffn_dim)
        self.linear2 = nn.Linear(cfg.ffn_dim, d)
        self.norm1 = nn.LayerNorm(d, eps=1e-5)
        self.norm2 = nn.LayerNorm(d, eps=1e-5)
        self.dropout = nn.Dropout(cfg.dropout)

    def _post(self, x: torch.Tensor, attn: torch.Tensor) -> torch.Tensor:
        x = self.norm1(x + self.dropout(self.self_attn.out_proj(attn)))
        ff = self.linear2(self.dropout(F.relu(self.linear1(x))))
        return self.norm2(x + self.dropout(ff))

    def forward_full(self, x: torch.Tensor, allowed: torch.Tensor):
        """x: [B, S, D]; allowed: [B, 1, S, S] bool (True = may attend) or an additive float bias (0 / very negative).
        Returns (x, k, v), k/v [B, H, S, Dh] (the head-split cache layout)."""
        sa = self.self_attn
        b, s, d = x.shape
        # the projections run on [B*S, D]: on 2-D operands the exported graph has one Gemm with the bias
        # inside instead of MatMul + a separate Add over every output (8% of a full-size prefill)
        rows = x.reshape(b * s, d)
        q, k, v = (sa.split_heads(t.view(b, s, d)) for t in sa.qkv(rows))  # [B, H, S, Dh] each
        p = self.dropout.p if self.training else 0.0
        out = F.scaled_dot_product_attention(q, k, v, allowed, dropout_p=p)
        return self._post(rows, sa.merge_heads(out).reshape(b * s, d)).view(b, s, d), k, v

    def forward_step(self, x: torch.Tensor, past_k: torch.Tensor, past_v: torch.Tensor, past_bias: torch.Tensor):
        """One new position per row attending to its cache and to itself.

        x: [B, D]; past_k/past_v: [B, H, T, Dh]; past_bias: [B, 1, 1, T], 0 where the cache entry is
        valid and -inf where not.  Returns (x [B, D], k [B, H, 1, Dh], v [B, H, 1, Dh]).

        Written for a lean exported graph (each op below is one node, sizes are constants): the cache
        is read in place (no transposed or concatenated copy); the new position's score is computed
        apart and shares one softmax with the cache's scores.
        """
        sa = self.self_attn
        h, dh = sa.n_head, sa.head_dim
        qkv = F.linear(x, sa.in_proj_weight, sa.in_proj_bias).view(-1, 3 * h, 1, dh)
        qh, kh, vh = qkv.split(h, dim=1)  # [B, H, 1, Dh] each
        scale = 1.0 / math.sqrt(dh)
        s_past = torch.matmul(qh, past_k.transpose(-1, -2)) * scale + past_bias  # [B, H, 1, T]
        s_self = torch.matmul(qh, kh.transpose(-1, -2)) * scale  # [B, H, 1, 1]
        probs = torch.softmax(torch.cat([s_self, s_past], dim=-1), dim=-1)  # self first: constant slices
        out = torch.matmul(probs[..., 1:], past_v) + probs[..., :1] * vh  # [B, H, 1, Dh]
        return self._post(x, out.reshape(-1, h * dh)), kh, vh


class Layers(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.layers = nn.ModuleList(GPTLayer(cfg) for _ in range(cfg.n_layer))


class Text2SemanticGPT(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.cfg = cfg
        d = cfg.hidden_dim
        self.bert_proj = nn.Linear(cfg.bert_dim, d)
        self.ar_text_embedding = TokenEmbedding(cfg.phoneme_vocab_size, d)
        self.ar_text_position = SinePositions(d, cfg.dropout)
        self.ar_audio_embedding = TokenEmbedding(cfg.vocab_size, d)
        self.ar_audio_position = SinePositions(d, cfg.dropout)
        self.h = Layers(cfg)
        self.ar_predict_layer = nn.Linear(d, cfg.vocab_size, bias=False)

    # ---------------------------------------------------------------- embeddings
    def embed_text(self, phones: torch.Tensor, bert: torch.Tensor) -> torch.Tensor:
        """phones: [B, Tx] int64; bert: [B, bert_dim, Tx] -> [B, Tx, D] with text positions 0..Tx-1."""
        x = self.ar_text_embedding(phones) + self.bert_proj(bert.transpose(1, 2))
        return self.ar_text_position(x)

    def embed_audio(self, tokens: torch.Tensor, positions: torch.Tensor | None = None) -> torch.Tensor:
        """tokens: [B, T] int64 (< vocab_size); positions: [B, T] audio positions -> [B, T, D]."""
        return self.ar_audio_position(self.ar_audio_embedding(tokens), positions)

    # ---------------------------------------------------------------- inference
    def prefill(
        self,
        phones: torch.Tensor,
        phone_lens: torch.Tensor,
        bert: torch.Tensor,
        prompt: torch.Tensor,
        prompt_lens: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Run the whole prompt of every row.

        phones [B, Tx] (right-padded), phone_lens [B], bert [B, bert_dim, Tx], prompt [B, Ty] semantic
        tokens (right-padded; Ty may be 0 for reference-free rows), prompt_lens [B].
        Row b is packed as ``[text_b | prompt_b | padding]`` of length S = Tx + Ty.
        Returns logits [B, vocab] of each row's last position, keys and values [L, B, H, S, Dh] (the
        cache layout: heads split, so attention reads it in place) and the valid lengths
        seq_lens [B] = phone_lens + prompt_lens.
        """
        b, tx = phones.shape
        ty = prompt.shape[1]
        text = self.embed_text(phones, bert)  # [B, Tx, D]
        audio = self.embed_audio(prompt)  # [B, Ty, D]
        s = tx + ty
        j = torch.arange(s, device=phones.device).unsqueeze(0)  # [1, S]
        xl = phone_lens.view(b, 1)
        seq_lens = phone_lens + prompt_lens
        sl = seq_lens.view(b, 1)
        # gather index into [text | audio]: text positions first, then this row's prompt tokens
        src = torch.where(j < xl, j, tx + j - xl)
        src = torch.where(j < sl, src, torch.zeros_like(src))  # padding reads position 0 (masked)
        both = torch.cat([text, audio], dim=1)  # [B, Tx + Ty, D]
        x = torch.gather(both, 1, src.unsqueeze(-1).expand(b, s, both.shape[-1]))  # [B, S, D]
        # one additive bias for all layers: a boolean mask makes every layer convert it again, and the
        # exported graph guards each softmax against fully masked rows (Where + IsNaN over [B, H, S, S],
        # 12% of a full-size prefill); a finite minimum gives the same probabilities (exp underflows to
        # exactly 0) and no row here is fully masked (every query sees the text)
        allowed = self.prefix_lm_mask(phone_lens, seq_lens, s)
        bias = torch.zeros(allowed.shape, dtype=x.dtype, device=x.device).masked_fill(~allowed, torch.finfo(x.dtype).min)
        ks, vs = [], []
        for layer in self.h.layers:
            x, k, v = layer.forward_full(x, bias)
            ks.append(k)
            vs.append(v)
        last = torch.gather(x, 1, (seq_lens - 1).clamp(min=0).view(b, 1, 1).expand(b, 1, x.shape[-1]))
        logits = self.ar_predict_layer(last[:, 0])
        return logits, torch.stack(ks), torch.stack(vs), seq_lens

    @staticmethod
    def prefix_lm_mask(text_lens: torch.Tensor, seq_lens: torch.Tensor, s: int) -> torch.Tensor:
        """[B, 1, S, S] bool: query i may attend key j (text bidirectional, audio causal, padding out)."""
        i = torch.arange(s, device=text_lens.device).view(1, s, 1)
        j = torch.arange(s, device=text_lens.device).view(1, 1, s)
        xl = text_lens.view(-1, 1, 1)
        sl = seq_lens.view(-1, 1, 1)
        key_is_text = j < xl
        causal_audio = (i >= xl) & (j <= i)
        return ((j < sl) & (key_is_text | causal_audio)).unsqueeze(1)

    def decode_step(
        self,
        tokens: torch.Tensor,
        audio_pos: torch.Tensor,
        k_cache: torch.Tensor,
        v_cache: torch.Tensor,
        kv_lens: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Feed one token per row.

        tokens [B] int64: the last token of each row; audio_pos [B]: its audio position (number of
        semantic tokens before it, prompt included); k_cache/v_cache [L, B, H, T, Dh] with kv_lens [B]
        valid entries per row (entries at and after kv_lens are ignored).
        Returns logits [B, vocab] and the new keys/values [L, B, H, Dh] to be written at index kv_lens.
        """
        b = tokens.shape[0]
        x = self.embed_audio(tokens.unsqueeze(1), audio_pos.unsqueeze(1))[:, 0]  # [B, D]
        t = k_cache.shape[3]
        valid = torch.arange(t, device=tokens.device).view(1, t) < kv_lens.view(-1, 1)  # [B, T]
        bias = torch.zeros(valid.shape, dtype=x.dtype, device=x.device).masked_fill(~valid, float("-inf"))
        bias = bias.view(b, 1, 1, t)  # added to the scores of every layer and head
        new_k, new_v = [], []
        for i, layer in enumerate(self.h.layers):
            x, k, v = layer.forward_step(x, k_cache[i], v_cache[i], bias)
            new_k.append(k)
            new_v.append(v)
        # [B, H, L, Dh] -> [L, B, H, Dh]: one concat and one transpose instead of a stack of L
        new_k = torch.cat(new_k, dim=2).permute(2, 0, 1, 3)
        new_v = torch.cat(new_v, dim=2).permute(2, 0, 1, 3)
        return self.ar_predict_layer(x), new_k, new_v

    # ---------------------------------------------------------------- training
    def forward_train(
        self,
        phones: torch.Tensor,
        phone_lens: torch.Tensor,
        semantic: torch.Tensor,
        semantic_lens: torch.Tensor,
        bert: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Teacher-forced logits as upstream's ``forward_old`` (training) computes them.

        phones [B, Px] right-padded, semantic [B, Ty] right-padded, bert [B, bert_dim, Px].
        Returns logits [B, Ty + 1, vocab] (from the last text position on, so the last text position
        predicts the first token) and targets [B, Ty + 1] (tokens, EOS at padding, final EOS).
        Upstream quirk kept on purpose: the *text* padding mask is built left-aligned
        (``make_pad_mask_left``) although the text is right-padded.
        """
        b, px = phones.shape
        ty = semantic.shape[1]
        eos = self.cfg.eos
        ar = torch.arange(ty, device=semantic.device).unsqueeze(0)
        y_pad = ar >= semantic_lens.view(b, 1)  # [B, Ty] True at padding
        codes = semantic.masked_fill(y_pad, 0)
        targets = F.pad(codes, (0, 1), value=0) + eos * F.pad(y_pad.long(), (0, 1), value=1)  # [B, Ty+1]
        x = self.embed_text(phones, bert)
        # upstream embeds the collated ids as they are: the padding (pad_val = EOS) is fed as EOS tokens
        y = self.embed_audio(semantic.masked_fill(y_pad, eos))
        xy = torch.cat([x, y], dim=1)  # [B, Px + Ty, D]
        s = px + ty
        x_pad = torch.arange(px, device=phones.device).unsqueeze(0) < (px - phone_lens).view(b, 1)  # left-aligned
        key_pad = torch.cat([x_pad, y_pad], dim=1)  # [B, S]
        i = torch.arange(s, device=phones.device).view(s, 1)
        j = torch.arange(s, device=phones.device).view(1, s)
        blocked = ((i < px) & (j >= px)) | ((i >= px) & (j >= px) & (j > i))  # [S, S]
        allowed = ~(blocked.unsqueeze(0) | key_pad.unsqueeze(1))  # [B, S, S]
        h = xy
        for layer in self.h.layers:
            h, _, _ = layer.forward_full(h, allowed.unsqueeze(1))
        logits = self.ar_predict_layer(h[:, px - 1 :])  # [B, Ty + 1, vocab]
        return logits, targets
