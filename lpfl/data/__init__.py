"""Data: packaged corpora and user files, the fixed test split, few-shot sampling, and the
partitioners that spread examples over federated clients."""

from lpfl.data.corpora import ALL_DOMAINS, CORPORA, load_corpus
from lpfl.data.examples import UNLABELED, Example
from lpfl.data.federated import FederatedData, build_federated_data
from lpfl.data.loading import load_dataset, load_eval_file
from lpfl.data.partition import partition_dirichlet, partition_domain, partition_iid
from lpfl.data.splits import SPLIT_SEED, Split, few_shot, fixed_split
from lpfl.data.user_files import Labels, Row, load_device_file, load_user_file, read_rows

__all__ = [
    "ALL_DOMAINS",
    "CORPORA",
    "SPLIT_SEED",
    "UNLABELED",
    "Example",
    "FederatedData",
    "Labels",
    "Row",
    "Split",
    "build_federated_data",
    "few_shot",
    "fixed_split",
    "load_corpus",
    "load_dataset",
    "load_device_file",
    "load_eval_file",
    "load_user_file",
    "partition_dirichlet",
    "partition_domain",
    "partition_iid",
    "read_rows",
]
