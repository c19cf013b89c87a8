"""Request helpers shared by the generation models (shipped next to their ``model.py``; numpy only)."""


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
            raise ValueError(f"{name} row {row} must be UTF-8 encoded ({error.reason} at byte {error.start})") from error
        if not text.strip():
            raise ValueError(f"{name} row {row} must not be empty")
        ids = tokenizer.encode(text).ids
        if len(ids) > max_tokens:
            raise ValueError(f"{name} row {row} has {len(ids)} tokens; this model takes at most {max_tokens} ({fix})")
        rows.append(ids)
    return rows
