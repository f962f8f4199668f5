package tokentap.agent;

import java.io.ByteArrayOutputStream;
import java.io.InputStream;
import java.util.Random;

/**
 * Checks tokentap's class-file patcher (ClassPatch) on code shapes JSSE's
 * methods may take in any JDK: every method of {@link Sample} is patched in
 * both modes, the patched class is loaded by a class loader of its own (so
 * the JVM's verifier checks it: stack map frames, exception table,
 * switches, uninitialised objects, wide arguments), and each method must give
 * the original's result with its hook run exactly once per outer call.
 * Then thousands of corrupted class files: each one is refused with a reason
 * or patched, never anything else. Prints "ok <methods> <corrupted>".
 */
public final class PatchCheck {
    /** What the hooks call back through (the app loader's view of Sample). */
    public interface Api {
        int add(int a, int b);

        long wide(long a, double b, int[] c, String d, float e);

        int switches(int k);

        int guarded(int n);

        String fresh(boolean f);

        void plain();

        int spin(int n);

        Object[] array(int n);
    }

    public static final class Sample implements Api {
        int plainCalls;

        public int add(int a, int b) {
            return a + b;
        }

        public long wide(long a, double b, int[] c, String d, float e) {
            return a + (long) b + c.length + d.length() + (long) e;
        }

        public int switches(int k) {
            int r;
            switch (k) {
                case 0: r = 10; break;
                case 1: r = 11; break;
                case 2: r = 12; break;
                default: r = -1;
            }
            switch (k * 1000) {
                case 0: return r + 1;
                case 2000: return r + 2;
                case 99000: return r + 3;
                default: return r;
            }
        }

        public int guarded(int n) {
            int sum = 0;
            for (int i = 0; i < n; i++) {
                try {
                    if (i % 3 == 0) {
                        throw new IllegalStateException("x" + i);
                    }
                    sum += i;
                } catch (IllegalStateException e) {
                    sum -= 1;
                } finally {
                    sum += 100;
                }
            }
            return sum;
        }

        public String fresh(boolean f) {
            // An object created before a branch and used after: frames with an
            // uninitialised type, whose offsets must move with the code.
            return new StringBuilder(f ? "yes" : "no").append('!').toString();
        }

        public void plain() {
            plainCalls++;
        }

        public int spin(int n) {
            // A loop back to the method's first instruction: a frame at offset 0.
            do {
                n -= 2;
            } while (n > 0);
            return n;
        }

        public Object[] array(int n) {
            return new Object[n];
        }
    }

    /** The hooks the patched Sample calls. */
    public static final class Hooks {
        static int calls;
        static boolean pass;

        public static boolean pass() {
            boolean p = pass;
            pass = false;
            return p;
        }

        public static int add(Api s, int a, int b) {
            calls++;
            pass = true;
            return s.add(a, b);
        }

        public static long wide(Api s, long a, double b, int[] c, String d, float e) {
            calls++;
            pass = true;
            return s.wide(a, b, c, d, e);
        }

        public static int switches(Api s, int k) {
            calls++;
            pass = true;
            return s.switches(k);
        }

        public static int guarded(Api s, int n) {
            calls++;
            pass = true;
            return s.guarded(n);
        }

        public static String fresh(Api s, boolean f) {
            calls++;
            pass = true;
            return s.fresh(f);
        }

        public static void plain(Api s) {
            calls++;
        }

        public static int spin(Api s, int n) {
            calls++;
            pass = true;
            return s.spin(n);
        }

        public static Object[] array(Api s, int n) {
            calls++;
            pass = true;
            return s.array(n);
        }

        // Entry mode: the hook runs first, then the original code.
        public static void addEntry(Api s, int a, int b) {
            calls++;
        }

        public static void wideEntry(Api s, long a, double b, int[] c, String d, float e) {
            calls++;
        }

        public static void switchesEntry(Api s, int k) {
            calls++;
        }

        public static void guardedEntry(Api s, int n) {
            calls++;
        }

        public static void freshEntry(Api s, boolean f) {
            calls++;
        }

        public static void plainEntry(Api s) {
            calls++;
        }

        public static void spinEntry(Api s, int n) {
            calls++;
        }

        public static void arrayEntry(Api s, int n) {
            calls++;
        }
    }

    static final String SAMPLE = "tokentap/agent/PatchCheck$Sample";
    static final String[][] METHODS = {
        {"add", "(II)I"},
        {"wide", "(JD[ILjava/lang/String;F)J"},
        {"switches", "(I)I"},
        {"guarded", "(I)I"},
        {"fresh", "(Z)Ljava/lang/String;"},
        {"plain", "()V"},
        {"spin", "(I)I"},
        {"array", "(I)[Ljava/lang/Object;"},
    };

    /** Loads the patched Sample itself, everything else from the application. */
    static final class Loader extends ClassLoader {
        final byte[] bytes;

        Loader(byte[] bytes) {
            super(PatchCheck.class.getClassLoader());
            this.bytes = bytes;
        }

        @Override
        protected Class<?> loadClass(String name, boolean resolve) throws ClassNotFoundException {
            if (name.equals(SAMPLE.replace('/', '.'))) {
                synchronized (this) {
                    Class<?> c = findLoadedClass(name);
                    return c != null ? c : defineClass(name, bytes, 0, bytes.length);
                }
            }
            return super.loadClass(name, resolve);
        }
    }

    static void check(boolean ok, String what) {
        if (!ok) {
            throw new AssertionError(what);
        }
    }

    public static void main(String[] args) throws Exception {
        byte[] original;
        try (InputStream in = PatchCheck.class.getResourceAsStream("PatchCheck$Sample.class")) {
            original = in.readAllBytes();
        }
        Api plain = new Sample();
        int patched = 0;
        for (boolean wrap : new boolean[] {true, false}) {
            byte[] b = original;
            for (String[] m : METHODS) {
                boolean w = wrap && !m[0].equals("plain");
                ClassPatch.Site s = new ClassPatch.Site(SAMPLE, m[0], m[1], w ? m[0] : m[0] + "Entry",
                        "Ltokentap/agent/PatchCheck$Api;", null, null, w);
                s.hooks = "tokentap/agent/PatchCheck$Hooks";
                b = ClassPatch.apply(b, s);
                patched++;
            }
            Api p = (Api) new Loader(b).loadClass(SAMPLE.replace('/', '.')).getDeclaredConstructor().newInstance();
            Hooks.calls = 0;
            int[] arr = new int[7];
            check(p.add(2, 3) == plain.add(2, 3), "add");
            check(p.wide(1L << 40, 2.5, arr, "four", 5f) == plain.wide(1L << 40, 2.5, arr, "four", 5f), "wide");
            for (int k = -1; k < 100; k++) {
                check(p.switches(k) == plain.switches(k), "switches " + k);
            }
            check(p.guarded(10) == plain.guarded(10), "guarded");
            check(p.fresh(true).equals("yes!") && p.fresh(false).equals("no!"), "fresh");
            p.plain();
            check(((Sample) plain).plainCalls == 0, "plain");
            check(p.spin(9) == plain.spin(9), "spin");
            check(p.array(3).length == 3, "array");
            // One hook run per outer call (the second, passed call runs the original).
            int expected = 2 + 101 + 1 + 2 + 1 + 1 + 1;
            check(Hooks.calls == expected, "hook calls " + Hooks.calls + " != " + expected + " (wrap " + wrap + ")");
        }
        // Refusals: a static method, a missing method, garbage.
        int refused = 0;
        String[][] bad = {{"main", "([Ljava/lang/String;)V"}, {"nothing", "()V"}};
        for (String[] m : bad) {
            try {
                ClassPatch.apply(readOwn(), new ClassPatch.Site("tokentap/agent/PatchCheck", m[0], m[1], "x",
                        "Ljava/lang/Object;", null, null, true));
            } catch (ClassPatch.Refused expected) {
                refused++;
            }
        }
        check(refused == 2, "static and missing methods refused");
        Random r = new Random(42);
        int corrupted = 0;
        for (int i = 0; i < 20000; i++) {
            byte[] b = original.clone();
            int flips = 1 + r.nextInt(4);
            for (int f = 0; f < flips; f++) {
                b[r.nextInt(b.length)] = (byte) r.nextInt(256);
            }
            if (r.nextInt(10) == 0) {
                b = java.util.Arrays.copyOf(b, r.nextInt(b.length));
            }
            ClassPatch.Site s = new ClassPatch.Site(SAMPLE, "guarded", "(I)I", "guarded",
                    "Ltokentap/agent/PatchCheck$Api;", null, null, true);
            try {
                ClassPatch.apply(b, s);
            } catch (ClassPatch.Refused expected) {
                // Refused with a reason: fine.
            }
            corrupted++;
        }
        System.out.println("ok " + patched + " " + corrupted);
    }

    static byte[] readOwn() throws Exception {
        try (InputStream in = PatchCheck.class.getResourceAsStream("PatchCheck.class")) {
            ByteArrayOutputStream out = new ByteArrayOutputStream();
            in.transferTo(out);
            return out.toByteArray();
        }
    }
}
