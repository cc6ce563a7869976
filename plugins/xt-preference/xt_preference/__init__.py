"""xt-preference: DPO (and IPO), ORPO and reward-model objectives, preference datasets and an offline demo set."""
