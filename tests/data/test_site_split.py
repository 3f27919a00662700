"""The raw split behind a federated site is exactly the one its encoded data came from."""

from __future__ import annotations

import numpy as np

from fedcare.data.datasets import federated_site_split, load_federated_site


def test_raw_split_preprocessed_equals_the_sites_encoded_rows() -> None:
    args = {"dataset": "breast-cancer", "partition_id": 1, "num_partitions": 3,
            "partitioning": "iid", "data_dir": "", "split_seed": 7, "test_fraction": 0.25,
            "dirichlet_alpha": 0.5, "partition_seed": 2}

    site = load_federated_site(**args)
    raw = federated_site_split(**args)

    np.testing.assert_array_equal(site.preprocessor.transform(raw.x_test), site.x_test)
    np.testing.assert_array_equal(raw.y_test.astype(np.float32), site.y_test)
    assert len(raw.x_train) == len(site.y_train)
