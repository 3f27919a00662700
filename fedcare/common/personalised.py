"""Names shared by the site (which refines its personalised model) and the server (which
reports the scores the site sends): the local-refinement modes, the candidates a site
chooses among, the metric keys of its reply and the label a site-only model carries.

``local-refinement = "dp"`` (the default): the personalised model is the DP-trained
global model plus the site's DP-trained private offset; nothing else touches the rows.
``"site-only"``: the site may also train on its own rows WITHOUT DP, because what it
trains never leaves the site; the resulting model is labelled :data:`SITE_ONLY_LABEL`
and fedcare refuses to export or serve it (docs/personalisation.md).
"""

from __future__ import annotations

__all__ = ["CANDIDATES", "DP_CANDIDATES", "LOCAL_REFINEMENTS", "SITE_ONLY_LABEL",
           "candidate_key", "choice_key"]

LOCAL_REFINEMENTS = ("dp", "site-only")

#: What a site-only model file and every report about it say.
SITE_ONLY_LABEL = "personalised model: contains non-DP site-only training; never share it"

#: Candidates in order of preference on a tie (DP-only first, then the simplest).
#:   global:    the shared DP model as it is;
#:   offset:    global + the site's private logit offset (trained in the DP steps);
#:   local:     logistic regression on the site's own rows (non-DP, site-only);
#:   blend:     w * risk(offset) + (1 - w) * risk(local), w chosen on validation rows;
#:   head:      a private last layer: logistic regression on the global model's last
#:              hidden layer (FedPer/FedRep style; non-DP, site-only);
#:   fine-tune: the global model (with its offset) fine-tuned on the site's rows, non-DP.
CANDIDATES = ("global", "offset", "local", "blend", "head", "fine-tune")
DP_CANDIDATES = ("global", "offset")

#: Metric key of the chosen candidate's index in :data:`CANDIDATES` in the site's reply.
CHOICE_KEY = "refined-choice"


def candidate_key(candidate: str, metric: str) -> str:
    """``refine-blend-accuracy``: one candidate's score on the held-out rows."""
    return f"refine-{candidate}-{metric}"


def choice_key() -> str:
    return CHOICE_KEY
