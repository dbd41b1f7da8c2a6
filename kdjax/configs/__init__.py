"""Config authoring: what the config files in ``configs/`` share, importable from anywhere.

A config file is a ``.py`` with ``get_config()`` returning an ``ml_collections.ConfigDict``
(every key and its default: :func:`kdjax.train.base_config`; their meanings:
:func:`kdjax.train.schema.key_table`). Files are loaded by path and cannot import each other, so
what several share lives here, in big_vision's ``configs.common`` shape:

* :mod:`kdjax.configs.common`: the base config on the bundled digits (:func:`common.digits`), on
  the bundled text (:func:`common.text_lm`), on the digit canvases (:func:`common.digit_canvases`)
  or on any dataset (:func:`common.on_dataset`); the teacher's model, steps and rate
  (:func:`common.teacher`); the optimizers (:func:`common.adam`, :func:`common.adamw_cosine`,
  :func:`common.momentum_cosine`, :func:`common.adamw_warmup`); the cross-entropy + KD objective
  (:func:`common.ce_and_kd`);
* :mod:`kdjax.configs.cifar100`: the CIFAR-100 benchmark protocol, its teacher/student pairs and
  the feature layers each method reads (``configs/cifar100/*.py``).
"""
from kdjax.configs import cifar100
from kdjax.configs import common

__all__ = ["cifar100", "common"]
