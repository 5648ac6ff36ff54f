"""Ready-made datasets (afnio's ``utils.datasets``).

Example:
    >>> from afnio_langchain.utils.datasets import FacilitySupport
    >>> FacilitySupport.resources[0][0]
    'dataset.json'
"""

from afnio_langchain.utils.datasets._facility_support import FacilitySupport

__all__ = ["FacilitySupport"]
