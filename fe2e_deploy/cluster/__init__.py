"""Beyond one process: a Ray Data batch job (:mod:`.batch`) and a Ray Serve HTTP app (:mod:`.serve`).

Both open engines with :func:`fe2e_deploy.engines.load_engine` once per worker/replica and write or
return exactly what ``infer`` writes. Ray is the optional ``ray`` extra: nothing here is imported by the
rest of the package, and Ray itself is imported only inside these modules.
"""
