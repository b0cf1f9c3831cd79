"""`ted pipeline`: a whole comparison from one config file (`config`), planned (`plan`) and run resumably (`runner`).

Named in the plural because `ted.pipeline` is the public API function of the same job."""

from __future__ import annotations
