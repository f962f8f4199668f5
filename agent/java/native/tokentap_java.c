/*
 * libtokentap_java.so: the native half of tokentap's Java agent.
 *
 * tokentap_java_data() and tokentap_java_close() do nothing but return.
 * tokentap's eBPF uprobes on their first instruction read the arguments and
 * copy the bytes (agent-ebpf/src/java.rs), as they do at OpenSSL's SSL_write:
 * no kprobe, no ioctl, no device. With no tokentap running, a call costs the
 * JNI transition and a return.
 *
 * Both are written in assembly so that the compiler can neither inline nor
 * drop them and their first instruction is known: a 5-byte NOP on x86-64 (the
 * kernel emulates a NOP rather than single-stepping it, and newer kernels can
 * turn a uprobe on one into a call), a NOP on arm64.
 *
 * Built with -nostdlib: the library needs no libc, so it loads in glibc and
 * musl JVMs alike. The JNI functions check their arguments: a bad range is
 * ignored, never read.
 */
#include <jni.h>

#if defined(__x86_64__)
#define PROBED_BODY ".byte 0x0f, 0x1f, 0x44, 0x00, 0x00\n\tret\n"
#elif defined(__aarch64__)
#define PROBED_BODY "nop\n\tret\n"
#else
#error "unsupported architecture"
#endif

#define PROBED(name)                                                           \
    __asm__(".text\n\t.globl " #name "\n\t.type " #name ", @function\n\t"      \
            ".p2align 4\n" #name ":\n\t" PROBED_BODY                           \
            "\t.size " #name ", .-" #name "\n")

PROBED(tokentap_java_data);
PROBED(tokentap_java_close);

/* direction: 0 written by the application, 1 read by it. */
__attribute__((visibility("default"))) void tokentap_java_data(jlong conn, jint direction, const void *buf,
                                                               jlong len);
__attribute__((visibility("default"))) void tokentap_java_close(jlong conn);

/*
 * Is tokentap probing us? A uprobe replaces the first instruction in this
 * process's copy of the page (a breakpoint, or a call on kernels that
 * optimise uprobes on a 5-byte NOP): the first byte then differs from the
 * NOP's. The Java agent waits for this before it reports anything, so no
 * byte is handed over before the kernel side can copy it.
 */
JNIEXPORT jboolean JNICALL Java_sun_security_ssl_TokentapHooks_probed(JNIEnv *env, jclass cls) {
    (void)env;
    (void)cls;
    const volatile unsigned char *code = (const volatile unsigned char *)(void *)&tokentap_java_data;
#if defined(__x86_64__)
    return code[0] != 0x0f;
#else
    return *(const volatile unsigned int *)(const volatile void *)code != 0xd503201fu;
#endif
}

JNIEXPORT jint JNICALL JNI_OnLoad(JavaVM *vm, void *reserved) {
    (void)vm;
    (void)reserved;
    return JNI_VERSION_1_8;
}

JNIEXPORT void JNICALL Java_sun_security_ssl_TokentapHooks_data(JNIEnv *env, jclass cls, jlong conn, jint direction,
                                                      jbyteArray arr, jint off, jint len) {
    (void)cls;
    if (arr == NULL || off < 0 || len <= 0) {
        return;
    }
    jsize n = (*env)->GetArrayLength(env, arr);
    if (off > n || len > n - off) {
        return;
    }
    /* Pinned, not copied: the critical section lasts one empty call. */
    jbyte *p = (*env)->GetPrimitiveArrayCritical(env, arr, NULL);
    if (p == NULL) {
        (*env)->ExceptionClear(env);
        return;
    }
    tokentap_java_data(conn, direction, p + off, (jlong)len);
    (*env)->ReleasePrimitiveArrayCritical(env, arr, p, JNI_ABORT);
}

JNIEXPORT void JNICALL Java_sun_security_ssl_TokentapHooks_dataDirect(JNIEnv *env, jclass cls, jlong conn, jint direction,
                                                            jobject buf, jint off, jint len) {
    (void)cls;
    if (buf == NULL || off < 0 || len <= 0) {
        return;
    }
    char *p = (*env)->GetDirectBufferAddress(env, buf);
    jlong cap = (*env)->GetDirectBufferCapacity(env, buf);
    if (p == NULL || cap < 0 || (jlong)off > cap || (jlong)len > cap - off) {
        return;
    }
    tokentap_java_data(conn, direction, p + off, (jlong)len);
}

JNIEXPORT void JNICALL Java_sun_security_ssl_TokentapHooks_close(JNIEnv *env, jclass cls, jlong conn) {
    (void)env;
    (void)cls;
    tokentap_java_close(conn);
}
