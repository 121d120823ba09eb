"""backtrans: instruction backtranslation (Li et al., 2023) as a Ray Data job."""
