"""Formats the coordinator and the sites share, so neither imports the other's package.

- The model manifest: ``model.json`` beside every global ``.keras`` file (written by
  :mod:`fedcare.server.checkpoint`, read by :mod:`fedcare.hospital.bundle`).
- SecAgg+ quantisation (server: :mod:`fedcare.server.secure_aggregation`; site:
  :mod:`fedcare.site.secure_aggregation`). Each site sends (count / MAX_WEIGHT) x weights,
  clipped to +-CLIPPING_RANGE and stochastically rounded to QUANTIZATION_RANGE levels; the
  server divides the sum by the summed ratios. So a global weight is off by at most
  ``sites x (2 x CLIPPING_RANGE / QUANTIZATION_RANGE) / (total count / MAX_WEIGHT)``
  (about 2e-5 for 3 sites of ~140 rows). Sums must stay below Flower's 2**32 modulus: at most
  2**32 / QUANTIZATION_RANGE - 1 = 63 sites; a site above MAX_WEIGHT rows is clipped.
"""

MANIFEST = "model.json"
MANIFEST_FORMAT = "fedcare-model-manifest"

CLIPPING_RANGE = 8.0
QUANTIZATION_RANGE = 2**26
MAX_WEIGHT = 10_000.0
