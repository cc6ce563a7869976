"""xt-alpaca: Alpaca-format datasets, the Alpaca template and an offline demo dataset for xt."""
