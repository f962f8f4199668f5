package tokentap.agent;

import java.io.ByteArrayOutputStream;

/**
 * Puts a call to a static hook at the start of one method of a class file, and
 * changes nothing else.
 *
 * Why by hand: no third-party library may be shipped (no bytecode library),
 * the JDK's internal ASM copy is gone from recent JDKs and java.lang.classfile
 * only arrived in JDK 24, so neither works on every JDK from 11 on. A prefix is
 * the one edit that needs no control-flow analysis: the original code moves
 * down by the prefix's length, its relative branches stay valid, and only the
 * absolute code offsets (exception table, stack map frames, line and local
 * variable tables) shift. The prefix length is a multiple of four, so the
 * padding of tableswitch/lookupswitch stays aligned.
 *
 * Two shapes:
 * - entry: {@code hook(this, args...)}, then the original code;
 * - wrap: {@code if (!Hooks.pass()) return hook([outer,] this, args...);} then
 *   the original code. The hook does its work around a second call of the
 *   same method, for which it sets the one-shot pass flag first, so that call
 *   runs the original code. The branch target gets a stack map frame equal to
 *   the method's initial frame.
 *
 * Anything this code does not understand (an unknown code attribute, a local
 * beyond index 255, a class file that does not parse) is refused with a
 * {@link Refused}, and the class stays as it was.
 */
final class ClassPatch {
    static final String HOOKS = "sun/security/ssl/TokentapHooks";

    /** Thrown when a class is left unchanged, with the reason. */
    static final class Refused extends Exception {
        private static final long serialVersionUID = 1L;

        Refused(String why) {
            super(why, null, false, false);
        }
    }

    /** One method to hook. */
    static final class Site {
        final String owner;
        final String method;
        final String desc;
        final String hook;
        /** The hook's type for {@code this} (a public supertype). */
        final String selfType;
        /** A field of the class passed first (an inner class's outer instance), or null. */
        final String outerField;
        final String outerDesc;
        final boolean wrap;
        /** The class holding the hook and {@code pass()}. */
        String hooks = HOOKS;

        Site(String owner, String method, String desc, String hook, String selfType, String outerField,
                String outerDesc, boolean wrap) {
            this.owner = owner;
            this.method = method;
            this.desc = desc;
            this.hook = hook;
            this.selfType = selfType;
            this.outerField = outerField;
            this.outerDesc = outerDesc;
            this.wrap = wrap;
        }

        /** The hook's descriptor: ([outer,] self, the method's arguments) and its return type. */
        String hookDesc() {
            int close = desc.indexOf(')');
            String outer = outerField == null ? "" : "Ljava/lang/Object;";
            return "(" + outer + selfType + desc.substring(1, close) + ")" + (wrap ? desc.substring(close + 1) : "V");
        }

        String name() {
            return owner + "." + method + desc;
        }
    }

    private ClassPatch() {}

    /** The class file with {@code site}'s method prefixed. */
    static byte[] apply(byte[] in, Site site) throws Refused {
        try {
            return new ClassPatch.Run(in, site).run();
        } catch (IndexOutOfBoundsException e) {
            throw new Refused("truncated class file");
        }
    }

    /** One patching of one class file. */
    private static final class Run {
        final byte[] b;
        final Site site;
        int cpCount;
        int[] cpOff;
        final ByteArrayOutputStream added = new ByteArrayOutputStream();
        int next;

        Run(byte[] b, Site site) {
            this.b = b;
            this.site = site;
        }

        int u1(int at) {
            return b[at] & 0xff;
        }

        int u2(int at) {
            return (u1(at) << 8) | u1(at + 1);
        }

        int u4(int at) {
            return (u2(at) << 16) | u2(at + 2);
        }

        String utf8(int index) throws Refused {
            if (index <= 0 || index >= cpCount || u1(cpOff[index]) != 1) {
                throw new Refused("bad constant pool reference " + index);
            }
            int at = cpOff[index];
            // Modified UTF-8; our names are ASCII, so a byte-wise compare is exact for them.
            int len = u2(at + 1);
            char[] c = new char[len];
            for (int i = 0; i < len; i++) {
                c[i] = (char) u1(at + 3 + i);
            }
            return new String(c);
        }

        byte[] run() throws Refused {
            if (u4(0) != 0xCAFEBABE) {
                throw new Refused("not a class file");
            }
            if (u2(6) < 50) {
                throw new Refused("class file version " + u2(6) + " has no stack map frames");
            }
            cpCount = u2(8);
            cpOff = new int[cpCount];
            int p = 10;
            for (int i = 1; i < cpCount; i++) {
                cpOff[i] = p;
                int tag = u1(p);
                switch (tag) {
                    case 1: p += 3 + u2(p + 1); break;
                    case 3: case 4: p += 5; break;
                    case 5: case 6: p += 9; i++; break;
                    case 7: case 8: case 16: case 19: case 20: p += 3; break;
                    case 9: case 10: case 11: case 12: case 17: case 18: p += 5; break;
                    case 15: p += 4; break;
                    default: throw new Refused("constant pool tag " + tag);
                }
            }
            int cpEnd = p;
            next = cpCount;
            int thisClass = u2(p + 2);
            p += 6;
            p += 2 + 2 * u2(p);
            p = skipMembers(p);
            int methods = u2(p);
            p += 2;
            for (int m = 0; m < methods; m++) {
                int access = u2(p);
                String name = utf8(u2(p + 2));
                String desc = utf8(u2(p + 4));
                int attrs = u2(p + 6);
                int a = p + 8;
                boolean target = name.equals(site.method) && desc.equals(site.desc);
                for (int i = 0; i < attrs; i++) {
                    int len = u4(a + 2);
                    if (target && utf8(u2(a)).equals("Code")) {
                        if ((access & 0x0008) != 0) {
                            throw new Refused("static method");
                        }
                        byte[] code = patchCode(a, thisClass);
                        ByteArrayOutputStream out = new ByteArrayOutputStream(b.length + 256);
                        out.write(b, 0, 8);
                        put2(out, next);
                        out.write(b, 10, cpEnd - 10);
                        byte[] extra = added.toByteArray();
                        out.write(extra, 0, extra.length);
                        out.write(b, cpEnd, a - cpEnd);
                        out.write(code, 0, code.length);
                        int after = a + 6 + len;
                        out.write(b, after, b.length - after);
                        return out.toByteArray();
                    }
                    a += 6 + len;
                }
                p = a;
            }
            throw new Refused("no method " + site.method + site.desc);
        }

        int skipMembers(int p) {
            int n = u2(p);
            p += 2;
            for (int i = 0; i < n; i++) {
                int attrs = u2(p + 6);
                p += 8;
                for (int j = 0; j < attrs; j++) {
                    p += 6 + u4(p + 2);
                }
            }
            return p;
        }

        // Constant pool entries appended after the existing ones.
        int utf8Const(String s) throws Refused {
            byte[] bytes = s.getBytes(java.nio.charset.StandardCharsets.UTF_8);
            added.write(1);
            put2(added, bytes.length);
            added.write(bytes, 0, bytes.length);
            return take(1);
        }

        int classConst(String name) throws Refused {
            int n = utf8Const(name);
            added.write(7);
            put2(added, n);
            return take(1);
        }

        int memberRef(int tag, int cls, String name, String desc) throws Refused {
            int n = utf8Const(name);
            int d = utf8Const(desc);
            added.write(12);
            put2(added, n);
            put2(added, d);
            int nat = take(1);
            added.write(tag);
            put2(added, cls);
            put2(added, nat);
            return take(1);
        }

        int take(int slots) throws Refused {
            int i = next;
            next += slots;
            if (next > 0xffff) {
                throw new Refused("constant pool full");
            }
            return i;
        }

        /** The Code attribute at {@code a}, with the prefix in front. */
        byte[] patchCode(int a, int thisClass) throws Refused {
            int maxStack = u2(a + 6);
            int maxLocals = u2(a + 8);
            int codeLen = u4(a + 10);
            int codeAt = a + 14;
            int exAt = codeAt + codeLen;
            int exCount = u2(exAt);
            int attrsAt = exAt + 2 + 8 * exCount;

            byte[] prefix = prefix(thisClass);
            int shift = prefix.length;
            if (codeLen + shift > 0xffff) {
                throw new Refused("method too long");
            }
            int need = Math.max(slots(site.desc) + 1 + (site.outerField == null ? 0 : 1),
                    Math.max(1, returnSlots(site.desc)));

            ByteArrayOutputStream attrs = new ByteArrayOutputStream();
            int attrCount = u2(attrsAt);
            int p = attrsAt + 2;
            boolean hadFrames = false;
            int written = 0;
            for (int i = 0; i < attrCount; i++) {
                String name = utf8(u2(p));
                int len = u4(p + 2);
                int body = p + 6;
                byte[] out;
                switch (name) {
                    case "StackMapTable":
                        hadFrames = true;
                        out = frames(body, shift);
                        break;
                    case "LineNumberTable":
                        out = shiftEntries(body, 4, shift, false);
                        break;
                    case "LocalVariableTable":
                    case "LocalVariableTypeTable":
                        out = shiftEntries(body, 10, shift, true);
                        break;
                    default:
                        throw new Refused("code attribute " + name);
                }
                put2(attrs, u2(p));
                put4(attrs, out.length);
                attrs.write(out, 0, out.length);
                written++;
                p = body + len;
            }
            if (!hadFrames && site.wrap) {
                int name = utf8Const("StackMapTable");
                byte[] out = frames(-1, shift);
                put2(attrs, name);
                put4(attrs, out.length);
                attrs.write(out, 0, out.length);
                written++;
            }

            ByteArrayOutputStream body = new ByteArrayOutputStream();
            put2(body, Math.max(maxStack, need));
            put2(body, maxLocals);
            put4(body, codeLen + shift);
            body.write(prefix, 0, shift);
            body.write(b, codeAt, codeLen);
            put2(body, exCount);
            for (int i = 0; i < exCount; i++) {
                int e = exAt + 2 + 8 * i;
                put2(body, u2(e) + shift);
                put2(body, u2(e + 2) + shift);
                put2(body, u2(e + 4) + shift);
                put2(body, u2(e + 6));
            }
            put2(body, written);
            byte[] at = attrs.toByteArray();
            body.write(at, 0, at.length);

            ByteArrayOutputStream code = new ByteArrayOutputStream();
            put2(code, u2(a));
            put4(code, body.size());
            byte[] bb = body.toByteArray();
            code.write(bb, 0, bb.length);
            return code.toByteArray();
        }

        /** The prefix's bytecode; its length is a multiple of 4. */
        byte[] prefix(int thisClass) throws Refused {
            int hooks = classConst(site.hooks);
            int hook = memberRef(10, hooks, site.hook, site.hookDesc());
            int pass = site.wrap ? memberRef(10, hooks, "pass", "()Z") : 0;
            int outer = site.outerField == null ? 0 : memberRef(9, thisClass, site.outerField, site.outerDesc);
            ByteArrayOutputStream loads = new ByteArrayOutputStream();
            if (site.outerField != null) {
                loads.write(0x2a); // aload_0
                loads.write(0xb4); // getfield
                put2(loads, outer);
            }
            loads.write(0x2a);
            int slot = 1;
            String d = site.desc;
            int i = 1;
            while (d.charAt(i) != ')') {
                char c = d.charAt(i);
                int op;
                int width = 1;
                int end = i + 1;
                switch (c) {
                    case 'J': op = 0x16; width = 2; break;
                    case 'D': op = 0x18; width = 2; break;
                    case 'F': op = 0x17; break;
                    case 'L': op = 0x19; end = d.indexOf(';', i) + 1; break;
                    case '[':
                        op = 0x19;
                        while (d.charAt(end - 1) == '[') {
                            end++;
                        }
                        if (d.charAt(end - 1) == 'L') {
                            end = d.indexOf(';', end) + 1;
                        }
                        break;
                    default: op = 0x15; break;
                }
                if (slot > 255) {
                    throw new Refused("argument in local " + slot);
                }
                loads.write(op);
                loads.write(slot);
                slot += width;
                i = end;
            }
            int call = 3;
            int head = site.wrap ? 6 : 0;
            int ret = site.wrap ? 1 : 0;
            int len = head + loads.size() + call + ret;
            int pad = (4 - len % 4) % 4;
            ByteArrayOutputStream out = new ByteArrayOutputStream();
            for (int k = 0; k < pad; k++) {
                out.write(0x00); // nop: in front, so no unreachable code follows the return
            }
            int total = pad + len;
            if (site.wrap) {
                out.write(0xb8); // invokestatic Hooks.pass()Z
                put2(out, pass);
                int at = out.size();
                out.write(0x9a); // ifne: the second call runs the original code
                put2(out, total - at);
            }
            byte[] l = loads.toByteArray();
            out.write(l, 0, l.length);
            out.write(0xb8);
            put2(out, hook);
            if (site.wrap) {
                out.write(returnOp(site.desc));
            }
            return out.toByteArray();
        }

        /**
         * The StackMapTable body at {@code at} (or none, at -1) for code moved
         * down by {@code shift}: in wrap mode a same_frame at the original
         * code's start (the prefix branches there with the initial frame); the
         * first frame's offset delta re-based; Uninitialized(offset) types moved.
         */
        byte[] frames(int at, int shift) throws Refused {
            ByteArrayOutputStream out = new ByteArrayOutputStream();
            int count = at < 0 ? 0 : u2(at);
            int p = at + 2;
            boolean add = site.wrap;
            if (count > 0 && add && firstDelta(p) == 0) {
                // A frame already sits at the original start: it must accept the
                // initial frame, which is what the branch brings; reuse it.
                add = false;
            }
            put2(out, count + (add ? 1 : 0));
            if (add) {
                sameFrame(out, shift);
            }
            for (int f = 0; f < count; f++) {
                int tag = u1(p);
                int delta;
                int rest;
                if (tag < 64) {
                    delta = tag;
                    rest = p + 1;
                } else if (tag < 128) {
                    delta = tag - 64;
                    rest = p + 1;
                } else if (tag >= 247) {
                    delta = u2(p + 1);
                    rest = p + 3;
                } else {
                    throw new Refused("stack map frame type " + tag);
                }
                if (f == 0) {
                    delta = add ? delta - 1 : delta + shift;
                }
                if (tag < 64 || tag == 251) {
                    sameFrame(out, delta);
                } else if (tag < 128 || tag == 247) {
                    if (delta < 64) {
                        out.write(64 + delta);
                    } else {
                        out.write(247);
                        put2(out, delta);
                    }
                    p = types(out, rest, 1, shift);
                    continue;
                } else {
                    out.write(tag);
                    put2(out, delta);
                }
                if (tag >= 248 && tag <= 251) {
                    p = rest;
                } else if (tag >= 252 && tag <= 254) {
                    p = types(out, rest, tag - 251, shift);
                } else if (tag == 255) {
                    put2(out, u2(rest));
                    p = types(out, rest + 2, u2(rest), shift);
                    put2(out, u2(p));
                    p = types(out, p + 2, u2(p), shift);
                } else {
                    p = rest;
                }
            }
            return out.toByteArray();
        }

        int firstDelta(int p) {
            int tag = u1(p);
            return tag < 64 ? tag : tag < 128 ? tag - 64 : u2(p + 1);
        }

        void sameFrame(ByteArrayOutputStream out, int delta) {
            if (delta < 64) {
                out.write(delta);
            } else {
                out.write(251);
                put2(out, delta);
            }
        }

        /** Copy {@code n} verification types, moving Uninitialized offsets. */
        int types(ByteArrayOutputStream out, int p, int n, int shift) throws Refused {
            for (int i = 0; i < n; i++) {
                int t = u1(p);
                out.write(t);
                if (t == 7) {
                    put2(out, u2(p + 1));
                    p += 3;
                } else if (t == 8) {
                    put2(out, u2(p + 1) + shift);
                    p += 3;
                } else if (t <= 6) {
                    p += 1;
                } else {
                    throw new Refused("verification type " + t);
                }
            }
            return p;
        }

        /** A table of {@code size}-byte entries whose first u2 is a code offset. */
        byte[] shiftEntries(int at, int size, int shift, boolean keepLength) {
            ByteArrayOutputStream out = new ByteArrayOutputStream();
            int n = u2(at);
            put2(out, n);
            for (int i = 0; i < n; i++) {
                int e = at + 2 + size * i;
                put2(out, u2(e) + shift);
                out.write(b, e + 2, size - 2);
            }
            return out.toByteArray();
        }
    }

    /** Local variable slots of a method descriptor's arguments. */
    static int slots(String desc) {
        int n = 0;
        int i = 1;
        while (desc.charAt(i) != ')') {
            char c = desc.charAt(i);
            if (c == 'J' || c == 'D') {
                n += 2;
                i++;
            } else {
                while (desc.charAt(i) == '[') {
                    i++;
                }
                i = desc.charAt(i) == 'L' ? desc.indexOf(';', i) + 1 : i + 1;
                n++;
            }
        }
        return n;
    }

    static int returnSlots(String desc) {
        char r = desc.charAt(desc.indexOf(')') + 1);
        return r == 'V' ? 0 : r == 'J' || r == 'D' ? 2 : 1;
    }

    static int returnOp(String desc) {
        switch (desc.charAt(desc.indexOf(')') + 1)) {
            case 'V': return 0xb1;
            case 'J': return 0xad;
            case 'F': return 0xae;
            case 'D': return 0xaf;
            case 'L': case '[': return 0xb0;
            default: return 0xac;
        }
    }

    static void put2(ByteArrayOutputStream out, int v) {
        out.write(v >>> 8);
        out.write(v);
    }

    static void put4(ByteArrayOutputStream out, int v) {
        put2(out, v >>> 16);
        put2(out, v);
    }
}
