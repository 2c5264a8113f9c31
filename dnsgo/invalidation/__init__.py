"""
Cache invalidation: the Flush value (:mod:`.flush`), the pub/sub message
format (:mod:`.batch`) and the strategies that carry a flush to the other
workers (:mod:`.strategies`).
"""
