"""Pairs are tokenized as pairs (both records survive truncation); single texts as before."""

from crowdforge.modeling.backbone import PACKAGED_MINILM, resolve_backbone
from crowdforge.modeling.tokens import is_pair, length_batches, pad_ids, split_pair, token_ids


def _tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(resolve_backbone(PACKAGED_MINILM), local_files_only=True)


def test_split_pair():
    assert split_pair("sony tv 40 [SEP] camera 40", ["[SEP]"]) == ("sony tv 40", "camera 40")
    assert split_pair("just one text", ["[SEP]"]) == ("just one text", None)
    assert split_pair("a [SEP] b [SEP] c", ["[SEP]"]) == ("a", "b [SEP] c")  # split at the first


def test_pairs_keep_both_records_under_truncation():
    tok = _tokenizer()
    left = " ".join(["television"] * 80)
    text = f"{left} [SEP] camera"
    assert is_pair(text, tok)
    (ids,) = token_ids(tok, [text], max_length=32)
    assert len(ids) == 32
    words = tok.convert_ids_to_tokens(ids)
    assert words[0] == "[CLS]" and words.count("[SEP]") == 2 and "camera" in words  # right record kept
    # joined naively, the right record would be cut off
    naive = tok.convert_ids_to_tokens(tok(text, truncation=True, max_length=32)["input_ids"])
    assert "camera" not in naive


def test_single_texts_are_unchanged_and_mixed_batches_keep_order():
    tok = _tokenizer()
    texts = ["the soup was fine", "left record [SEP] right record", "great phone"]
    ids = token_ids(tok, texts, max_length=16)
    assert ids[0] == tok(texts[0], truncation=True, max_length=16)["input_ids"]
    assert ids[2] == tok(texts[2], truncation=True, max_length=16)["input_ids"]
    assert ids[1] == tok("left record", "right record", truncation="longest_first", max_length=16)["input_ids"]


def test_padding_and_length_batches():
    input_ids, mask = pad_ids([[1, 2, 3], [4]], pad_id=0)
    assert input_ids.tolist() == [[1, 2, 3], [4, 0, 0]] and mask.tolist() == [[1, 1, 1], [1, 0, 0]]
    batches = length_batches([5, 1, 3, 2], batch_size=2)
    assert batches == [[1, 3], [2, 0]]
