"""Data for distillation runs: datasets, training streams and evaluation batches.

The global batch and the data order depend only on the config (dataset, seed, global batch
size), never on the number of devices, processes or workers; each process loads only its
contiguous slice of every global batch. Augmentation happens once per example in the pipeline,
so teacher and student see the same view.

Datasets: ``'digits'`` (scikit-learn, offline; the quickstart default), ``'synthetic'`` (and
:class:`SyntheticDataset` for other shapes), ``'tfds:<dataset>[:<config>]'`` (TFDS prepared on
disk in the array_record format, read without TensorFlow), and the user's own files:
``'folder:<dir>'`` (``<dir>/<split>/<class>/<image>`` or ``<dir>/<class>/<image>``, decoded
with Pillow), ``'npz:<file>'`` (``<split>_images`` / ``<split>_labels`` arrays), ``'idx:<dir>'``
(MNIST, Fashion-MNIST, KMNIST IDX files), ``'tfds-dir:<dir>'`` (a prepared TFDS dataset
directory) and ``'cifar100-python:<path>[:coarse]'`` (the official CIFAR-100 Python archive).

Example::

  it = kdjax.data.make_train_iterator('digits', global_batch_size=128, seed=0,
                                      process_index=jax.process_index(),
                                      process_count=jax.process_count(),
                                      augment={'crop_padding': 1})
  batch = next(it)                  # {'image', 'label', 'index'}: this process's rows
  state = it.get_state()            # JSON-serialisable; it.set_state(state) resumes
  for batch in kdjax.data.make_eval_batches('digits', batch_size=128):
    ...                             # batch['mask'] marks real examples in the padded last batch
"""
from kdjax.data._augment import AugmentOptions
from kdjax.data._base import DataError
from kdjax.data._base import Dataset
from kdjax.data._base import DatasetInfo
from kdjax.data._base import DatasetNotPreparedError
from kdjax.data._base import Source
from kdjax.data._builtin import ArrayDataset
from kdjax.data._builtin import SyntheticDataset
from kdjax.data._files import read_idx
from kdjax.data._folder import FolderDataset
from kdjax.data._pipeline import DEGRADED_KEY
from kdjax.data._pipeline import DegradeOptions
from kdjax.data._pipeline import EvalBatches
from kdjax.data._pipeline import MappedIterator
from kdjax.data._pipeline import ReplayViews
from kdjax.data._pipeline import TrainIterator
from kdjax.data._pipeline import make_eval_batches
from kdjax.data._pipeline import make_replay_views
from kdjax.data._pipeline import make_train_iterator
from kdjax.data._pipeline import target_specs
from kdjax.data._registry import available_datasets
from kdjax.data._registry import get_dataset
from kdjax.data._registry import get_info
from kdjax.data._stdlib_text import TextCorpus
from kdjax.data._stdlib_text import stdlib_corpus
from kdjax.data._tfds import TfdsDataset
from kdjax.data._tfds_dir import TfdsDirDataset

__all__ = [
    "ArrayDataset",
    "AugmentOptions",
    "DataError",
    "Dataset",
    "DatasetInfo",
    "DatasetNotPreparedError",
    "DEGRADED_KEY",
    "DegradeOptions",
    "EvalBatches",
    "FolderDataset",
    "MappedIterator",
    "ReplayViews",
    "Source",
    "SyntheticDataset",
    "TextCorpus",
    "TfdsDataset",
    "TfdsDirDataset",
    "TrainIterator",
    "available_datasets",
    "get_dataset",
    "get_info",
    "make_eval_batches",
    "make_replay_views",
    "make_train_iterator",
    "read_idx",
    "stdlib_corpus",
    "target_specs",
]
