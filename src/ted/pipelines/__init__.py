"""`ted pipeline`: a whole comparison from one config file (`config`), planned and run resumably (`runner`).

Named in the plural because `ted.pipeline` is the public API function of the same job."""
