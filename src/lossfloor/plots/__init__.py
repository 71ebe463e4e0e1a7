"""Every figure (matplotlib, Agg backend, written atomically): curves, diagnoses, samples and the studies'
figures.  Imported lazily by the commands and studies, so that a start-up does not pay for matplotlib."""

import matplotlib

matplotlib.use("Agg")
