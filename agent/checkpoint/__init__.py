"""checkpoint.scan machinery: which opens to scan, the scanner and its bounds.

opener.py   which opens count, the absolute path, reopening the opened file
scanner.py  picklescan plus a deny-list, within fixed memory bounds
compressed.py  joblib-style compressed pickles, decompressed as a stream
bounded.py  the byte-budget file view every pickle is read through
child.py    the scanner process (memory limit, idle priority, kill on timeout)
worker.py   the bounded queue, the caches and the thread that feeds the child
The sensor itself is agent/sensors/checkpoint.py.
"""
