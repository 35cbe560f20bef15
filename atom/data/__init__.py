"""Data: dataset loaders (original formats), the synthetic task, long-context samples, token chunks.

Import the modules themselves (``atom.data.records``, ``atom.data.longcontext``, ...); ``atom.data.datamodule``
(``AtomDataModule``) imports Lightning, the record types do not.
"""
