/* LD_PRELOAD shim: report PEER_NPROCS CPUs to code that sizes its thread pool from the CPU count.
 * chatglm.cpp 0.4.2 has no thread option: it uses std::thread::hardware_concurrency(), which in
 * libstdc++ calls glibc get_nprocs(); sysconf(_SC_NPROCESSORS_ONLN/CONF) and get_nprocs_conf() are
 * overridden too so every usual route agrees.  Unset or invalid PEER_NPROCS -> real values. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdlib.h>
#include <unistd.h>
#include <sys/sysinfo.h>

static int forced(void) {
    const char *s = getenv("PEER_NPROCS");
    if (!s || !*s) return 0;
    int n = atoi(s);
    return n > 0 ? n : 0;
}

int get_nprocs(void) {
    int n = forced();
    if (n) return n;
    int (*real)(void) = (int (*)(void))dlsym(RTLD_NEXT, "get_nprocs");
    return real ? real() : 1;
}

int get_nprocs_conf(void) {
    int n = forced();
    if (n) return n;
    int (*real)(void) = (int (*)(void))dlsym(RTLD_NEXT, "get_nprocs_conf");
    return real ? real() : 1;
}

long sysconf(int name) {
    static long (*real)(int) = 0;
    if (!real) real = (long (*)(int))dlsym(RTLD_NEXT, "sysconf");
    if (name == _SC_NPROCESSORS_ONLN || name == _SC_NPROCESSORS_CONF) {
        int n = forced();
        if (n) return n;
    }
    return real(name);
}
