"""The Visual Decathlon family (MTAN section 4.2): many domains, one domain per batch.

A plugin of the core (``mtlkit.registry.PLUGINS``, as detectron2's ``projects/``): nothing outside
this package names it, and the registries import it on their first lookup. Importing it registers
the architectures ``wrn`` and ``wrn_mtan`` (:mod:`.wrn`, over the core's ``wrn28`` backbone and MTAN
class) and the datasets ``decathlon`` (the organisers' folder, :mod:`.data`) and
``decathlon_synthetic`` (procedural, CPU-sized, :mod:`.synthetic`); :mod:`.cli` adds the commands
``mtlkit decathlon-score`` and ``mtlkit evaluate --refresh-bn`` (:mod:`.evaluate`).
``decathlon_score`` (:mod:`.score`) computes the challenge's score from per-domain test accuracies.
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
