"""Training data: read rows from files, turn targets into labels, tokenize, batch.

The path from a file to a batch, one small module per step::

    read_examples(path)            -> list[Example]        (readers.py)
    label_vocabulary / class_ids   -> class names and ids  (labels.py)
    encode(examples, tokenizer, task, ...) -> EncodedSample (encoding.py)
    batches(samples, ...)          -> lists of samples     (batches.py)
    collate(batch, pad_id, task=)  -> dict of tensors      (collate.py)

Every bad row is a ``DataError`` that names the file, the line and the field.
"""

from pac.data.errors import DataError
from pac.data.examples import Example

__all__ = ["DataError", "Example"]
