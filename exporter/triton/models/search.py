"""Greedy and beam search over an exported encoder/decoder pair, and greedy generation over a decoder-only
language model's step graph (numpy only).

Used in process (over ONNX Runtime sessions) and by the Triton translation and generation
models, which ship this file next to their ``model.py``: it imports nothing from headprune.
``encode(feeds)`` and ``decode(feeds)`` run the two graphs of ``exporter.onnx.seq2seq``
and return dicts of arrays. Greedy search reproduces transformers' ``generate``
(``num_beams=1``) and beam search its ``early_stopping=True`` beams: start token,
suppressed tokens, forced end of sequence on the last allowed step. A sequence (or a
source's beams) that ended leaves the batch, so the remaining ones run on smaller tensors.
"""

import numpy as np


def session_runner(path, threads=0):
    """Returns ``run(feeds) -> {output name: array}`` over an ONNX Runtime CPU session of the graph at ``path``
    (feeds may hold more arrays than the graph takes)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    inputs, outputs = [i.name for i in session.get_inputs()], [o.name for o in session.get_outputs()]
    return lambda feeds: dict(zip(outputs, session.run(outputs, {name: feeds[name] for name in inputs})))


class Seq2SeqSearch:
    """Decoding with a KV cache for one exported translation model."""

    def __init__(self, encode, decode, layout, start_id, eos_id, suppressed_ids=(), forced_eos=False):
        self.encode, self.decode = encode, decode
        self.cross_names = [
            f"cross.{layer}.{part}" for layer, n in enumerate(layout["cross_heads"]) if n for part in ("key", "value")
        ]
        self.self_layers = [(layer, n) for layer, n in enumerate(layout["self_heads"]) if n]
        self.head_size = layout["head_size"]
        self.start_id, self.eos_id = start_id, eos_id
        self.suppressed = list(suppressed_ids)
        self.forced_eos = forced_eos

    def first_state(self, input_ids, attention_mask):
        """Returns the decoder's inputs before the first step: cross keys/values, mask, empty self caches."""
        # With no cross-attention head left the output does not depend on the source: nothing to encode.
        cross = self.encode({"input_ids": input_ids, "attention_mask": attention_mask}) if self.cross_names else {}
        state = {name: cross[name] for name in self.cross_names}
        state["encoder_attention_mask"] = attention_mask
        rows = input_ids.shape[0]
        for layer, heads in self.self_layers:
            for part in ("key", "value"):
                state[f"past.{layer}.{part}"] = np.zeros((rows, heads, 0, self.head_size), dtype=np.float32)
        return state

    def step(self, state, tokens, step, last_step):
        """Runs one decoder step for ``tokens`` at position ``step``, updating ``state``; returns the logits."""
        feeds = dict(state)
        feeds["input_ids"] = tokens.reshape(-1, 1).astype(np.int64)
        feeds["position_ids"] = np.full((len(tokens), 1), step, dtype=np.int64)
        outputs = self.decode(feeds)
        for layer, _ in self.self_layers:
            for part in ("key", "value"):
                state[f"past.{layer}.{part}"] = outputs[f"present.{layer}.{part}"]
        logits = outputs["logits"].astype(np.float32)
        if self.suppressed:
            logits[:, self.suppressed] = -np.inf
        if last_step and self.forced_eos:
            logits[:] = -np.inf
            logits[:, self.eos_id] = 0.0
        return logits

    @staticmethod
    def _keep(state, rows):
        return {name: value[rows] for name, value in state.items()}

    def greedy(self, input_ids, attention_mask, max_new_tokens):
        """Returns the generated token ids of each source (without the start token, up to and including EOS)."""
        input_ids, attention_mask = np.asarray(input_ids, np.int64), np.asarray(attention_mask, np.int64)
        results = [[] for _ in range(len(input_ids))]
        active = np.arange(len(input_ids))
        state = self.first_state(input_ids, attention_mask)
        tokens = np.full(len(input_ids), self.start_id, dtype=np.int64)
        for step in range(max_new_tokens):
            tokens = self.step(state, tokens, step, step == max_new_tokens - 1).argmax(-1)
            for row, token in zip(active, tokens):
                results[row].append(int(token))
            going = tokens != self.eos_id
            if not going.all():
                active, tokens = active[going], tokens[going]
                state = self._keep(state, np.flatnonzero(going))
            if not len(active):
                break
        return results

    def beam(self, input_ids, attention_mask, num_beams, max_new_tokens, length_penalty=1.0, early_stopping=True):
        """Returns the best hypothesis of a beam search per source (token ids, up to and including EOS).

        A hypothesis scores its summed log-probabilities divided by its length to the
        power ``length_penalty``. A source is done at ``max_new_tokens``, when its live beams
        are ranked with the ended ones, or earlier by transformers' ``early_stopping`` rule:
        True, once ``num_beams`` hypotheses ended; False (or "never"), once moreover the best
        live beam cannot beat the worst of the best ``num_beams`` ended ones (see ``_done``)."""
        input_ids, attention_mask = np.asarray(input_ids, np.int64), np.asarray(attention_mask, np.int64)
        count = len(input_ids)
        state = self._keep(self.first_state(input_ids, attention_mask), np.repeat(np.arange(count), num_beams))
        active = list(range(count))
        sequences = [[[]] * num_beams for _ in range(count)]
        scores = np.tile(np.r_[0.0, np.full(num_beams - 1, -np.inf)], (count, 1))  # one live beam at first
        ended = [[] for _ in range(count)]
        tokens = np.full(count * num_beams, self.start_id, dtype=np.int64)
        for step in range(max_new_tokens):
            last = step == max_new_tokens - 1
            logits = self.step(state, tokens, step, last)
            shifted = logits - logits.max(-1, keepdims=True)
            log_probs = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
            totals = (scores.reshape(-1, 1) + log_probs).reshape(len(active), -1)
            vocabulary = log_probs.shape[-1]
            survivors = []  # (item, rows, scores, sequences) of sources still searching
            for position, item in enumerate(active):
                rows, beam_scores, beam_sequences = [], [], []
                for rank, flat in enumerate(np.argsort(-totals[position], kind="stable")[: 2 * num_beams]):
                    beam, token = divmod(int(flat), vocabulary)
                    total = float(totals[position, flat])
                    if not np.isfinite(total):
                        break
                    sequence = sequences[position][beam] + [token]
                    if token == self.eos_id or last:
                        if rank < num_beams:  # an ending ranked below the beam width is dropped, as in transformers
                            ended[item].append((total / len(sequence) ** length_penalty, sequence))
                    elif len(rows) < num_beams:
                        rows.append(position * num_beams + beam)
                        beam_scores.append(total)
                        beam_sequences.append(sequence)
                if (
                    rows
                    and not last
                    and not _done(
                        [h[0] for h in ended[item]],
                        beam_scores[0],
                        step,
                        num_beams,
                        max_new_tokens,
                        early_stopping,
                        length_penalty,
                    )
                ):
                    padding = num_beams - len(rows)  # dead copies keep every source at num_beams rows
                    survivors.append(
                        (
                            item,
                            rows + rows[:1] * padding,
                            beam_scores + [-np.inf] * padding,
                            beam_sequences + beam_sequences[:1] * padding,
                        )
                    )
            if not survivors:
                break
            active = [item for item, _, _, _ in survivors]
            state = self._keep(state, np.array([row for _, rows, _, _ in survivors for row in rows]))
            scores = np.array([beam_scores for _, _, beam_scores, _ in survivors])
            sequences = [beam_sequences for _, _, _, beam_sequences in survivors]
            tokens = np.array([sequence[-1] for beams in sequences for sequence in beams], dtype=np.int64)
        return [max(hypotheses, key=lambda h: h[0])[1] if hypotheses else [] for hypotheses in ended]


def _done(ended_scores, best_live, step, num_beams, max_new_tokens, early_stopping, length_penalty):
    """Returns whether a source's beam search may stop after ``step`` (0-based), as transformers decides: never before
    ``num_beams`` hypotheses ended; with ``early_stopping`` True then; otherwise once the best live beam's summed
    log-probability ``best_live``, divided by its length (the longest allowed with "never" and a positive penalty)
    to the power ``length_penalty``, is no better than the worst of the ``num_beams`` best ended scores."""
    if len(ended_scores) < num_beams:
        return False
    if early_stopping is True:
        return True
    length = max_new_tokens if early_stopping == "never" and length_penalty > 0 else step + 1
    return best_live / length**length_penalty <= sorted(ended_scores, reverse=True)[num_beams - 1]


def left_padded(prompts, pad_id):
    """Returns (ids, attention mask) of token-id prompts padded on the left to one width, as generation wants."""
    width = max(len(p) for p in prompts)
    ids = np.array([[pad_id] * (width - len(p)) + list(p) for p in prompts], dtype=np.int64)
    mask = np.array([[0] * (width - len(p)) + [1] * len(p) for p in prompts], dtype=np.int64)
    return ids, mask


class CausalSearch:
    """Greedy generation with a KV cache over one exported decoder-only step graph (``exporter.onnx.causal``).

    Prompts are padded on the left and run in one first step; then one token per step. A
    continuation that produced EOS leaves the batch. Positions count each row's real tokens, so
    padding moves no row's positions, as transformers' ``generate`` does."""

    def __init__(self, step, layout, eos_ids, pad_id):
        self.run = step
        self.layers = [(layer, n) for layer, n in enumerate(layout["heads"]) if n]
        self.head_size = layout["head_size"]
        self.eos_ids, self.pad_id = list(eos_ids), pad_id

    def greedy(self, prompts, max_new_tokens):
        """Returns the greedy continuation of each prompt (token ids, up to and including an end-of-sequence id)."""
        tokens, mask = left_padded(prompts, self.pad_id)
        positions = np.maximum(mask.cumsum(-1) - 1, 0)
        state = {
            f"past.{layer}.{part}": np.zeros((len(prompts), heads, 0, self.head_size), dtype=np.float32)
            for layer, heads in self.layers
            for part in ("key", "value")
        }
        results = [[] for _ in prompts]
        active = np.arange(len(prompts))
        for _ in range(max_new_tokens):
            outputs = self.run({**state, "input_ids": tokens, "attention_mask": mask, "position_ids": positions})
            state = {name: outputs[name.replace("past.", "present.", 1)] for name in state}
            chosen = outputs["logits"].argmax(-1)
            for row, token in zip(active, chosen):
                results[row].append(int(token))
            going = ~np.isin(chosen, self.eos_ids)
            active, chosen = active[going], chosen[going]
            if not len(active):
                break
            state = {name: value[going] for name, value in state.items()}
            tokens = chosen.reshape(-1, 1).astype(np.int64)
            mask = np.concatenate([mask[going], np.ones((len(active), 1), dtype=np.int64)], axis=1)
            positions = positions[going][:, -1:] + 1
        return results
