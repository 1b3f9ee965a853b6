/* walvfs.c: an SQLite VFS over the default one that hands a commit's WAL frames to the kernel in
 * one write. SQLite writes a frame as two writes, its 24-byte header and its page; a commit of
 * eleven pages made 22 system calls before its fdatasync. Here the WAL's writes gather in a buffer
 * while they run on from each other, and go down in one write when SQLite syncs the file, reads
 * it, sizes or truncates it, or writes elsewhere in it. Nothing is durable before a sync in any
 * case, and with `synchronous = FULL` SQLite syncs the WAL at every commit before it publishes the
 * commit to other connections: no reader, in this process or another, can miss a held frame.
 * Every other file, and every other method, goes straight to the default VFS. */
#include "walvfs.h"

#include <pthread.h>
#include <sqlite3.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "util.h"

/* At most this much is held: the default VFS writes at most 128 KiB - 1 bytes a call (it masks
 * the length to 17 bits, as no page is larger), so a larger commit goes down in several writes. */
#define HOLD_MAX (124u * 1024u)

struct wfile {
        sqlite3_file base;
        sqlite3_file *real; /* the default VFS's file, right after this struct */
        bool wal;
        unsigned char *buf;
        size_t len, cap;
        sqlite3_int64 at; /* where buf[0] goes in the file */
};

static sqlite3_vfs *parent;
static uint64_t writes_asked, writes_made;

static void count(uint64_t *c)
{
        __atomic_add_fetch(c, 1, __ATOMIC_RELAXED);
}

void walvfs_get_stats(struct walvfs_stats *ret)
{
        ret->writes_asked = __atomic_load_n(&writes_asked, __ATOMIC_RELAXED);
        ret->writes_made = __atomic_load_n(&writes_made, __ATOMIC_RELAXED);
}

static int flush(struct wfile *f)
{
        if (f->len == 0)
                return SQLITE_OK;
        size_t n = f->len;
        f->len = 0; /* a failed write is SQLite's failed commit: it rolls back and writes again */
        count(&writes_made);
        return f->real->pMethods->xWrite(f->real, f->buf, (int)n, f->at);
}

static bool hold(struct wfile *f, const void *data, int amt, sqlite3_int64 off)
{
        size_t n = (size_t)amt;
        if (f->len > 0 && off >= f->at && off + amt <= f->at + (sqlite3_int64)f->len) {
                /* Rewriting what is held (a frame's header again, its checksums). */
                memcpy(f->buf + (off - f->at), data, n);
                return true;
        }
        if (f->len > 0 && off != f->at + (sqlite3_int64)f->len)
                return false;
        if (f->len + n > HOLD_MAX)
                return false;
        if (f->len + n > f->cap) {
                size_t cap = f->cap ? f->cap : 32u * 1024u;
                while (cap < f->len + n)
                        cap *= 2;
                if (cap > HOLD_MAX)
                        cap = HOLD_MAX;
                unsigned char *b = realloc(f->buf, cap);
                if (!b)
                        return false;
                f->buf = b;
                f->cap = cap;
        }
        if (f->len == 0)
                f->at = off;
        memcpy(f->buf + f->len, data, n);
        f->len += n;
        return true;
}

#define REAL(file)  (((struct wfile *)(file))->real)
#define FLUSH(file) flush((struct wfile *)(file))

static int w_close(sqlite3_file *file)
{
        struct wfile *f = (struct wfile *)file;
        int rc = flush(f);
        int rc2 = f->real->pMethods->xClose(f->real);
        free(f->buf);
        f->buf = NULL;
        f->cap = 0;
        return rc != SQLITE_OK ? rc : rc2;
}

static int w_read(sqlite3_file *file, void *buf, int amt, sqlite3_int64 off)
{
        int rc = FLUSH(file);
        return rc != SQLITE_OK ? rc : REAL(file)->pMethods->xRead(REAL(file), buf, amt, off);
}

static int w_write(sqlite3_file *file, const void *buf, int amt, sqlite3_int64 off)
{
        struct wfile *f = (struct wfile *)file;
        if (f->wal) {
                count(&writes_asked);
                if (hold(f, buf, amt, off))
                        return SQLITE_OK;
                int rc = flush(f);
                if (rc != SQLITE_OK)
                        return rc;
                if (hold(f, buf, amt, off))
                        return SQLITE_OK;
                count(&writes_made);
        }
        return f->real->pMethods->xWrite(f->real, buf, amt, off);
}

static int w_truncate(sqlite3_file *file, sqlite3_int64 size)
{
        int rc = FLUSH(file);
        return rc != SQLITE_OK ? rc : REAL(file)->pMethods->xTruncate(REAL(file), size);
}

static __thread walvfs_sync_fn sync_fn;
static __thread void *sync_userdata;

void walvfs_observe_syncs(walvfs_sync_fn fn, void *userdata)
{
        sync_fn = fn;
        sync_userdata = userdata;
}

static int w_sync(sqlite3_file *file, int flags)
{
        struct wfile *f = (struct wfile *)file;
        int rc = flush(f);
        if (rc != SQLITE_OK)
                return rc;
        if (!f->wal || !sync_fn)
                return f->real->pMethods->xSync(f->real, flags);
        uint64_t t0 = now_monotonic_usec();
        rc = f->real->pMethods->xSync(f->real, flags);
        if (rc == SQLITE_OK)
                sync_fn(sync_userdata, now_monotonic_usec() - t0);
        return rc;
}

static int w_file_size(sqlite3_file *file, sqlite3_int64 *size)
{
        int rc = FLUSH(file);
        return rc != SQLITE_OK ? rc : REAL(file)->pMethods->xFileSize(REAL(file), size);
}

static int w_lock(sqlite3_file *file, int lock)
{
        return REAL(file)->pMethods->xLock(REAL(file), lock);
}

static int w_unlock(sqlite3_file *file, int lock)
{
        return REAL(file)->pMethods->xUnlock(REAL(file), lock);
}

static int w_check_reserved(sqlite3_file *file, int *out)
{
        return REAL(file)->pMethods->xCheckReservedLock(REAL(file), out);
}

static int w_file_control(sqlite3_file *file, int op, void *arg)
{
        int rc = FLUSH(file);
        return rc != SQLITE_OK ? rc : REAL(file)->pMethods->xFileControl(REAL(file), op, arg);
}

static int w_sector_size(sqlite3_file *file)
{
        return REAL(file)->pMethods->xSectorSize(REAL(file));
}

static int w_device_characteristics(sqlite3_file *file)
{
        return REAL(file)->pMethods->xDeviceCharacteristics(REAL(file));
}

static int w_shm_map(sqlite3_file *file, int region, int size, int extend, void volatile **out)
{
        return REAL(file)->pMethods->xShmMap(REAL(file), region, size, extend, out);
}

static int w_shm_lock(sqlite3_file *file, int offset, int n, int flags)
{
        return REAL(file)->pMethods->xShmLock(REAL(file), offset, n, flags);
}

static void w_shm_barrier(sqlite3_file *file)
{
        REAL(file)->pMethods->xShmBarrier(REAL(file));
}

static int w_shm_unmap(sqlite3_file *file, int delete_flag)
{
        return REAL(file)->pMethods->xShmUnmap(REAL(file), delete_flag);
}

static int w_fetch(sqlite3_file *file, sqlite3_int64 off, int amt, void **out)
{
        int rc = FLUSH(file);
        return rc != SQLITE_OK ? rc : REAL(file)->pMethods->xFetch(REAL(file), off, amt, out);
}

static int w_unfetch(sqlite3_file *file, sqlite3_int64 off, void *p)
{
        return REAL(file)->pMethods->xUnfetch(REAL(file), off, p);
}

/* One table per version of the file beneath, so SQLite never calls a method it lacks. */
#define METHODS(version)                                                                           \
        {                                                                                          \
                .iVersion = version, .xClose = w_close, .xRead = w_read, .xWrite = w_write,        \
                .xTruncate = w_truncate, .xSync = w_sync, .xFileSize = w_file_size,                \
                .xLock = w_lock, .xUnlock = w_unlock, .xCheckReservedLock = w_check_reserved,      \
                .xFileControl = w_file_control, .xSectorSize = w_sector_size,                      \
                .xDeviceCharacteristics = w_device_characteristics,                                \
                .xShmMap = version >= 2 ? w_shm_map : NULL,                                        \
                .xShmLock = version >= 2 ? w_shm_lock : NULL,                                      \
                .xShmBarrier = version >= 2 ? w_shm_barrier : NULL,                                \
                .xShmUnmap = version >= 2 ? w_shm_unmap : NULL,                                    \
                .xFetch = version >= 3 ? w_fetch : NULL,                                           \
                .xUnfetch = version >= 3 ? w_unfetch : NULL,                                       \
        }
static const sqlite3_io_methods methods[] = {METHODS(1), METHODS(2), METHODS(3)};

static int w_open(sqlite3_vfs *vfs, sqlite3_filename name, sqlite3_file *file, int flags,
                  int *out_flags)
{
        struct wfile *f = (struct wfile *)file;
        memset(f, 0, sizeof(*f));
        f->real = (sqlite3_file *)(f + 1);
        int rc = parent->xOpen(parent, name, f->real, flags, out_flags);
        const sqlite3_io_methods *m = f->real->pMethods;
        if (!m)
                return rc; /* base.pMethods stays NULL: SQLite will not close it */
        int v = m->iVersion < 1 ? 1 : m->iVersion > 3 ? 3 : m->iVersion;
        f->base.pMethods = &methods[v - 1];
        f->wal = (flags & SQLITE_OPEN_WAL) != 0;
        return rc;
}

static int v_delete(sqlite3_vfs *vfs, const char *name, int sync_dir)
{
        return parent->xDelete(parent, name, sync_dir);
}

static int v_access(sqlite3_vfs *vfs, const char *name, int flags, int *out)
{
        return parent->xAccess(parent, name, flags, out);
}

static int v_full_pathname(sqlite3_vfs *vfs, const char *name, int n, char *out)
{
        return parent->xFullPathname(parent, name, n, out);
}

static void *v_dlopen(sqlite3_vfs *vfs, const char *name)
{
        return parent->xDlOpen(parent, name);
}

static void v_dlerror(sqlite3_vfs *vfs, int n, char *out)
{
        parent->xDlError(parent, n, out);
}

static void (*v_dlsym(sqlite3_vfs *vfs, void *h, const char *sym))(void)
{
        return parent->xDlSym(parent, h, sym);
}

static void v_dlclose(sqlite3_vfs *vfs, void *h)
{
        parent->xDlClose(parent, h);
}

static int v_randomness(sqlite3_vfs *vfs, int n, char *out)
{
        return parent->xRandomness(parent, n, out);
}

static int v_sleep(sqlite3_vfs *vfs, int usec)
{
        return parent->xSleep(parent, usec);
}

static int v_current_time(sqlite3_vfs *vfs, double *out)
{
        return parent->xCurrentTime(parent, out);
}

static int v_last_error(sqlite3_vfs *vfs, int n, char *out)
{
        return parent->xGetLastError ? parent->xGetLastError(parent, n, out) : 0;
}

static int v_current_time_int64(sqlite3_vfs *vfs, sqlite3_int64 *out)
{
        return parent->xCurrentTimeInt64(parent, out);
}

static sqlite3_vfs walvfs = {
    .iVersion = 2,
    .zName = WALVFS_NAME,
    .xOpen = w_open,
    .xDelete = v_delete,
    .xAccess = v_access,
    .xFullPathname = v_full_pathname,
    .xDlOpen = v_dlopen,
    .xDlError = v_dlerror,
    .xDlSym = v_dlsym,
    .xDlClose = v_dlclose,
    .xRandomness = v_randomness,
    .xSleep = v_sleep,
    .xCurrentTime = v_current_time,
    .xGetLastError = v_last_error,
    .xCurrentTimeInt64 = v_current_time_int64,
};

static int registered = SQLITE_ERROR;

static void do_register(void)
{
        parent = sqlite3_vfs_find(NULL);
        if (!parent || parent->iVersion < 2 || !parent->xCurrentTimeInt64)
                return;
        walvfs.szOsFile = (int)sizeof(struct wfile) + parent->szOsFile;
        walvfs.mxPathname = parent->mxPathname;
        registered = sqlite3_vfs_register(&walvfs, 0);
}

int walvfs_register(void)
{
        static pthread_once_t once = PTHREAD_ONCE_INIT;
        pthread_once(&once, do_register);
        return registered;
}
