"""The Visual Decathlon family (MTAN section 4.2): many domains, one domain per batch.

Importing this package registers the architectures ``wrn`` and ``wrn_mtan`` and the datasets
``decathlon`` (the organisers' folder) and ``decathlon_synthetic`` (procedural, CPU-sized).
``decathlon_score`` computes the challenge's score from per-domain test accuracies.
"""

from mtlkit.decathlon import data, synthetic, wrn  # noqa: F401  (registration)
from mtlkit.decathlon.data import DOMAINS, DecathlonBuilder, MultiDomainDataset, domain_batches
from mtlkit.decathlon.score import decathlon_score, default_baselines, format_table, score_table
from mtlkit.decathlon.synthetic import SyntheticDecathlonBuilder, write_decathlon_folder
from mtlkit.decathlon.wrn import WRN, WRNMTAN

__all__ = [
    "DOMAINS",
    "WRN",
    "WRNMTAN",
    "DecathlonBuilder",
    "MultiDomainDataset",
    "SyntheticDecathlonBuilder",
    "decathlon_score",
    "default_baselines",
    "domain_batches",
    "format_table",
    "score_table",
    "write_decathlon_folder",
]
