/* walvfs.h: an SQLite VFS over the default one that hands a commit's WAL frames to the kernel in
 * one write instead of two a page. */
#pragma once

#include <stdint.h>

#define WALVFS_NAME "vidu-wal"

/* Registers the VFS (not as the default); safe to call more than once, from any thread. Returns
 * an SQLite result code. Only for connections with `PRAGMA synchronous = FULL`: the frames are
 * held until SQLite syncs the WAL, which with FULL it does at every commit, before any other
 * connection can see the commit. */
int walvfs_register(void);

/* Calls fn(userdata, microseconds) after every sync of a WAL file that the calling thread makes
 * (with `synchronous = FULL`, the fdatasync at each commit), until called again; NULL stops. Per
 * thread: the checkpoint thread's syncs are not the commits'. */
typedef void (*walvfs_sync_fn)(void *userdata, uint64_t usec);
void walvfs_observe_syncs(walvfs_sync_fn fn, void *userdata);

/* Process-wide counts, for tests and benchmarks: WAL writes SQLite asked for, and writes made to
 * the file beneath. */
struct walvfs_stats {
        uint64_t writes_asked;
        uint64_t writes_made;
};
void walvfs_get_stats(struct walvfs_stats *ret);
