#ifndef CSYSTEMSHIMS_H
#define CSYSTEMSHIMS_H

// Linux calls Swift cannot reach through its Glibc module: pidfd_open (a descriptor that
// becomes readable when any process exits, child or not: how adopted instances are watched),
// prlimit on another process (an instance's memory limit), posix_spawn's chdir action, and
// epoll/eventfd (the epoll_event struct is packed on x86_64, so it stays on the C side).
#include <spawn.h>
#include <sys/types.h>

int capstan_pidfd_open(pid_t pid);
int capstan_set_memory_limit(pid_t pid, unsigned long long bytes);
int capstan_spawn_add_chdir(posix_spawn_file_actions_t *actions, const char *path);
/// Closes every descriptor from `from` up in the child (the daemon's sockets, the store, the
/// router's listeners must not leak into instances, whatever their CLOEXEC flag).
int capstan_spawn_add_closefrom(posix_spawn_file_actions_t *actions, int from);

int capstan_epoll_create(void);
int capstan_epoll_add(int epoll, int fd);
int capstan_epoll_remove(int epoll, int fd);
/// Waits for readable descriptors; fills `fds` with up to `max` of them; returns the count or -1.
int capstan_epoll_wait(int epoll, int *fds, int max, int timeout_ms);
int capstan_eventfd(void);
/// A pipe whose two ends are close-on-exec.
int capstan_pipe_cloexec(int fds[2]);
/// Gives the pages of the heap that hold no allocation back to the system (glibc's
/// malloc_trim: also the free pages between allocations, which free() keeps); 1 if any were.
int capstan_trim_heap(void);
/// Blocks of 128 KiB and more come from their own mappings, given back when freed: glibc
/// otherwise raises that threshold to the largest block freed so far (up to 32 MiB), and a
/// daemon that once read a large response keeps its later ones in the heap, among the caches.
void capstan_tune_heap(void);

#endif
