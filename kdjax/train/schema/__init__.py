"""The config schema: every key of a run's config, its default, meaning and checks, in one place.

A config stays an ``ml_collections.ConfigDict`` (the file format and the ``--config.<key>``
override machinery); its keys are declared here as typed sections, each a frozen dataclass that
owns its enumerations and its checks:

* :class:`Config`: the top-level keys, and the sections below;
* :class:`Optimizer` (:data:`OPTIMIZERS`, :data:`SCHEDULES`: name -> optax constructor);
* :class:`Model`, :class:`Teacher` (:data:`DTYPES`); :class:`Data`, :class:`Augment`;
  :class:`Mesh`, :class:`Logging`; :class:`Compress`, :class:`Export`; :class:`TeacherCache`;
* the free-form ``objective`` and ``stages``: :func:`check_objective`, :func:`check_stages`,
  :func:`term_parts`.

:func:`validate` checks a resolved config once (``kdjax.train.config.resolve`` calls it), and
every bad value fails there with one line naming ``config.<section>.<key>``.
:func:`key_table` lists every key with its default and meaning (``docs/training.md``'s table).

A new key is one field of its section, ``name: type = key(default, "meaning")`` (with
``runtime=True`` if a workdir may resume with another value of it), plus its check in the
section's ``check``; a new section is a :class:`Section` dataclass and one
``section(NewSection)`` field of :class:`Config`. ``base_config``, ``RUNTIME_KEYS`` and the key
table follow; ``tests/train/test_schema.py`` then asks for the regenerated table in the docs.
"""
from kdjax.train.schema._base import Row
from kdjax.train.schema._base import Section
from kdjax.train.schema._base import key
from kdjax.train.schema._base import section
from kdjax.train.schema._compress import ACT_BITS
from kdjax.train.schema._compress import EXPORT_FORMATS
from kdjax.train.schema._compress import HF_FORMAT
from kdjax.train.schema._compress import PRUNE_STRUCTURES
from kdjax.train.schema._compress import QUANTIZATIONS
from kdjax.train.schema._compress import WEIGHT_BITS
from kdjax.train.schema._compress import Compress
from kdjax.train.schema._compress import Export
from kdjax.train.schema._config import FREE_FORM
from kdjax.train.schema._config import MESH_AXES
from kdjax.train.schema._config import PARALLEL_MODES
from kdjax.train.schema._config import RUNTIME_KEYS
from kdjax.train.schema._config import Config
from kdjax.train.schema._config import Logging
from kdjax.train.schema._config import Mesh
from kdjax.train.schema._config import validate
from kdjax.train.schema._data import Augment
from kdjax.train.schema._data import Data
from kdjax.train.schema._data import tokenizer_file
from kdjax.train.schema._model import DTYPES
from kdjax.train.schema._model import HF_DTYPES
from kdjax.train.schema._model import MODEL_KEYS
from kdjax.train.schema._model import Model
from kdjax.train.schema._model import Teacher
from kdjax.train.schema._model import check_model_name
from kdjax.train.schema._model import hf_config
from kdjax.train.schema._model import model_section
from kdjax.train.schema._objective import TERM_KEYS
from kdjax.train.schema._objective import check_objective
from kdjax.train.schema._objective import check_stages
from kdjax.train.schema._objective import term_parts
from kdjax.train.schema._optimizer import OPTIMIZERS
from kdjax.train.schema._optimizer import SCHEDULES
from kdjax.train.schema._optimizer import Optimizer
from kdjax.train.schema._table import TABLE_BEGIN
from kdjax.train.schema._table import TABLE_END
from kdjax.train.schema._table import key_table
from kdjax.train.schema._table import key_table_markdown
from kdjax.train.schema._teacher_cache import TeacherCache

__all__ = [
    "ACT_BITS", "Augment", "Compress", "Config", "DTYPES", "Data", "Export", "FREE_FORM",
    "EXPORT_FORMATS", "HF_DTYPES", "HF_FORMAT", "hf_config", "tokenizer_file",
    "Logging", "MESH_AXES", "MODEL_KEYS", "Mesh", "Model", "OPTIMIZERS", "Optimizer",
    "PARALLEL_MODES", "PRUNE_STRUCTURES", "QUANTIZATIONS", "RUNTIME_KEYS", "Row", "SCHEDULES",
    "Section", "TABLE_BEGIN", "TABLE_END", "TERM_KEYS", "Teacher", "TeacherCache", "WEIGHT_BITS",
    "check_model_name", "check_objective", "check_stages", "key", "key_table",
    "key_table_markdown", "model_section", "section", "term_parts", "validate",
]
