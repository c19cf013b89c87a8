"""Request helpers shared by the generation models (shipped next to their ``model.py``; numpy only)."""

import numpy as np


def integer_parameter(parameters, name, default, low, high):
    """Returns request parameter ``name`` (``default`` when absent) as an integer; raises ValueError naming the
    allowed range when it is not one in [low, high]."""
    value = parameters.get(name, default)
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValueError(f"parameter {name} must be an integer from {low} to {high}; received {value!r}")
    return value


def token_rows(tensor, name, tokenizer, max_tokens, fix):
    """Returns the token ids of each row of the string input ``tensor`` (named ``name``); raises ValueError for a row
    that is not UTF-8, is empty, or holds more than ``max_tokens`` tokens (``fix`` says what to do then)."""
    if tensor is None:
        raise ValueError(f"input {name} is missing")
    rows = []
    for row, value in enumerate(tensor.as_numpy().reshape(-1)):
        try:
            text = value.decode("utf-8") if isinstance(value, bytes) else str(value)
        except UnicodeDecodeError as error:
            raise ValueError(
                f"{name} row {row} must be UTF-8 encoded ({error.reason} at byte {error.start})"
            ) from error
        if not text.strip():
            raise ValueError(f"{name} row {row} must not be empty")
        ids = tokenizer.encode(text).ids
        if len(ids) > max_tokens:
            raise ValueError(f"{name} row {row} has {len(ids)} tokens; this model takes at most {max_tokens} ({fix})")
        rows.append(ids)
    return rows


def grouped_responses(pb_utils, requests, parse, produce, output, doing):
    """Returns one response per request. ``parse(request)`` returns (group key, rows) or raises ValueError, which
    becomes that request's error; the rows of every request with one key are produced together by
    ``produce(key, rows)`` (one string per row, sent as the string output ``output``). A failure there fails its
    group's requests only, saying it could not be ``doing`` ("translate", "generate")."""
    responses, groups = [None] * len(requests), {}
    for index, request in enumerate(requests):
        try:
            key, rows = parse(request)
            groups.setdefault(key, []).append((index, rows))
        except ValueError as error:
            responses[index] = pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(str(error)))
    for key, members in groups.items():
        try:
            texts = produce(key, [row for _, rows in members for row in rows])
        except Exception as error:  # fails this group's requests only, with what went wrong
            for index, _ in members:
                responses[index] = pb_utils.InferenceResponse(
                    output_tensors=[],
                    error=pb_utils.TritonError(f"cannot {doing} for this request ({type(error).__name__}: {error})"),
                )
            continue
        start = 0
        for index, rows in members:
            values = np.array([t.encode("utf-8") for t in texts[start : start + len(rows)]], dtype=object)
            start += len(rows)
            responses[index] = pb_utils.InferenceResponse(
                output_tensors=[pb_utils.Tensor(output, values.reshape(-1, 1))]
            )
    return responses
