"""Round-one import path of ``RateController`` (``market_data_store.feedback``)."""

from market_data_store.feedback.rate_controller import RateController

__all__ = ["RateController"]
