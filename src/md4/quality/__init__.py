"""Yardsticks beyond the bound, as the field reports them: the generative perplexity and entropy of a run's samples
under a scorer, zero-shot perplexity on other corpora, the FID and KID of image samples, and the report that
gathers them (``md4 eval RUN --suite``)."""
