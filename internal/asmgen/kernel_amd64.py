# Generator for gdiv/kernel_amd64.s: `go generate ./gdiv` (needs python3). Output is checked in; tests compare it with the pure-Go kernel.
import sys

out = []


def e(s=""):
    out.append(s)


def variant(name, f32, diff):
    es = 4 if f32 else 8  # element size of the input
    shift = 2 if f32 else 3
    half = 4 * es  # byte offset of the second 4-element group
    step8 = 8 * es
    step4 = 4 * es
    T = "float32" if f32 else "float64"
    if diff:
        sig = f"func {name}(s *float64, a, b *{T}, n, stride, w int) float64"
        frame = "$0-56"
        ret = "ret+48(FP)"
    else:
        sig = f"func {name}(s *float64, x *{T}, n, stride, w int) float64"
        frame = "$0-48"
        ret = "ret+40(FP)"

    def load(addr_a, addr_b, reg, tmp):
        # widen/load 4 elements at addr into ymm reg (a-b for diff)
        if f32:
            e(f"\tVCVTPS2PD {addr_a}, {reg}")
            if diff:
                e(f"\tVCVTPS2PD {addr_b}, {tmp}")
                e(f"\tVSUBPD {tmp}, {reg}, {reg}")
        else:
            e(f"\tVMOVUPD {addr_a}, {reg}")
            if diff:
                e(f"\tVSUBPD {addr_b}, {reg}, {reg}")

    def loads(addr_a, addr_b, reg, tmp):
        # scalar: one element into xmm reg (low lane)
        if f32:
            e(f"\tVCVTSS2SD {addr_a}, {reg}, {reg}")
            if diff:
                e(f"\tVCVTSS2SD {addr_b}, {tmp}, {tmp}")
                e(f"\tVSUBSD {tmp}, {reg}, {reg}")
        else:
            e(f"\tVMOVSD {addr_a}, {reg}")
            if diff:
                e(f"\tVSUBSD {addr_b}, {reg}, {reg}")

    def addr(base, off, row):
        o = "" if off == 0 else str(off)
        idx = ["", "(R8*1)", "(R8*2)", "(R9*1)"][row]
        return f"{o}({base}){idx}"

    e(f"// {sig}")
    e(f"TEXT ·{name}(SB), NOSPLIT, {frame}")
    e("\tMOVQ s+0(FP), DI")
    if diff:
        e("\tMOVQ a+8(FP), SI")
        e("\tMOVQ b+16(FP), BX")
        e("\tMOVQ n+24(FP), AX")
        e("\tMOVQ stride+32(FP), R8")
        e("\tMOVQ w+40(FP), DX")
    else:
        e("\tMOVQ x+8(FP), SI")
        e("\tMOVQ n+16(FP), AX")
        e("\tMOVQ stride+24(FP), R8")
        e("\tMOVQ w+32(FP), DX")
    e(f"\tSHLQ ${shift}, R8")
    e("\tLEAQ (R8)(R8*2), R9")
    for r in range(8, 16):
        e(f"\tVXORPD Y{r}, Y{r}, Y{r}")
    e("\tVXORPD X7, X7, X7")
    L = name
    # ---- groups of 4 rows
    e(f"{L}_rows4:")
    e("\tCMPQ AX, $4")
    e(f"\tJLT {L}_rows1")
    e("\tMOVQ DI, R10")
    e("\tMOVQ SI, R11")
    if diff:
        e("\tMOVQ BX, R12")
    e("\tMOVQ DX, CX")
    e(f"{L}_r4c8:")
    e("\tCMPQ CX, $8")
    e(f"\tJLT {L}_r4c4")
    e("\tVMOVUPD (R10), Y0")
    e("\tVMOVUPD 32(R10), Y1")
    for r in range(4):
        load(addr("R11", 0, r), addr("R12", 0, r), "Y2", "Y4")
        load(addr("R11", half, r), addr("R12", half, r), "Y3", "Y5")
        e(f"\tVFMADD231PD Y2, Y2, Y{8 + 2 * r}")
        e(f"\tVFMADD231PD Y3, Y3, Y{9 + 2 * r}")
        e("\tVADDPD Y2, Y0, Y0")
        e("\tVADDPD Y3, Y1, Y1")
    e("\tVMOVUPD Y0, (R10)")
    e("\tVMOVUPD Y1, 32(R10)")
    e("\tADDQ $64, R10")
    e(f"\tADDQ ${step8}, R11")
    if diff:
        e(f"\tADDQ ${step8}, R12")
    e("\tSUBQ $8, CX")
    e(f"\tJMP {L}_r4c8")
    e(f"{L}_r4c4:")
    e("\tCMPQ CX, $4")
    e(f"\tJLT {L}_r4c1")
    e("\tVMOVUPD (R10), Y0")
    for r in range(4):
        load(addr("R11", 0, r), addr("R12", 0, r), "Y2", "Y4")
        e(f"\tVFMADD231PD Y2, Y2, Y{8 + 2 * r}")
        e("\tVADDPD Y2, Y0, Y0")
    e("\tVMOVUPD Y0, (R10)")
    e("\tADDQ $32, R10")
    e(f"\tADDQ ${step4}, R11")
    if diff:
        e(f"\tADDQ ${step4}, R12")
    e("\tSUBQ $4, CX")
    e(f"{L}_r4c1:")
    e("\tTESTQ CX, CX")
    e(f"\tJEQ {L}_r4next")
    e("\tVMOVSD (R10), X0")
    for r in range(4):
        loads(addr("R11", 0, r), addr("R12", 0, r), "X2", "X4")
        e("\tVFMADD231SD X2, X2, X7")
        e("\tVADDSD X2, X0, X0")
    e("\tVMOVSD X0, (R10)")
    e("\tADDQ $8, R10")
    e(f"\tADDQ ${es}, R11")
    if diff:
        e(f"\tADDQ ${es}, R12")
    e("\tDECQ CX")
    e(f"\tJMP {L}_r4c1")
    e(f"{L}_r4next:")
    e("\tLEAQ (SI)(R8*4), SI")
    if diff:
        e("\tLEAQ (BX)(R8*4), BX")
    e("\tSUBQ $4, AX")
    e(f"\tJMP {L}_rows4")
    # ---- single rows
    e(f"{L}_rows1:")
    e("\tTESTQ AX, AX")
    e(f"\tJEQ {L}_done")
    e("\tMOVQ DI, R10")
    e("\tMOVQ SI, R11")
    if diff:
        e("\tMOVQ BX, R12")
    e("\tMOVQ DX, CX")
    e(f"{L}_r1c8:")
    e("\tCMPQ CX, $8")
    e(f"\tJLT {L}_r1c4")
    load(addr("R11", 0, 0), addr("R12", 0, 0), "Y2", "Y4")
    load(addr("R11", half, 0), addr("R12", half, 0), "Y3", "Y5")
    e("\tVFMADD231PD Y2, Y2, Y8")
    e("\tVFMADD231PD Y3, Y3, Y9")
    e("\tVADDPD (R10), Y2, Y0")
    e("\tVADDPD 32(R10), Y3, Y1")
    e("\tVMOVUPD Y0, (R10)")
    e("\tVMOVUPD Y1, 32(R10)")
    e("\tADDQ $64, R10")
    e(f"\tADDQ ${step8}, R11")
    if diff:
        e(f"\tADDQ ${step8}, R12")
    e("\tSUBQ $8, CX")
    e(f"\tJMP {L}_r1c8")
    e(f"{L}_r1c4:")
    e("\tCMPQ CX, $4")
    e(f"\tJLT {L}_r1c1")
    load(addr("R11", 0, 0), addr("R12", 0, 0), "Y2", "Y4")
    e("\tVFMADD231PD Y2, Y2, Y10")
    e("\tVADDPD (R10), Y2, Y0")
    e("\tVMOVUPD Y0, (R10)")
    e("\tADDQ $32, R10")
    e(f"\tADDQ ${step4}, R11")
    if diff:
        e(f"\tADDQ ${step4}, R12")
    e("\tSUBQ $4, CX")
    e(f"{L}_r1c1:")
    e("\tTESTQ CX, CX")
    e(f"\tJEQ {L}_r1next")
    loads(addr("R11", 0, 0), addr("R12", 0, 0), "X2", "X4")
    e("\tVFMADD231SD X2, X2, X7")
    e("\tVADDSD (R10), X2, X0")
    e("\tVMOVSD X0, (R10)")
    e("\tADDQ $8, R10")
    e(f"\tADDQ ${es}, R11")
    if diff:
        e(f"\tADDQ ${es}, R12")
    e("\tDECQ CX")
    e(f"\tJMP {L}_r1c1")
    e(f"{L}_r1next:")
    e("\tADDQ R8, SI")
    if diff:
        e("\tADDQ R8, BX")
    e("\tDECQ AX")
    e(f"\tJMP {L}_rows1")
    # ---- reduction
    e(f"{L}_done:")
    e("\tVADDPD Y9, Y8, Y8")
    e("\tVADDPD Y11, Y10, Y10")
    e("\tVADDPD Y13, Y12, Y12")
    e("\tVADDPD Y15, Y14, Y14")
    e("\tVADDPD Y10, Y8, Y8")
    e("\tVADDPD Y14, Y12, Y12")
    e("\tVADDPD Y12, Y8, Y8")
    e("\tVEXTRACTF128 $1, Y8, X9")
    e("\tVADDPD X9, X8, X8")
    e("\tVUNPCKHPD X8, X8, X9")
    e("\tVADDSD X9, X8, X8")
    e("\tVADDSD X7, X8, X8")
    e("\tVZEROUPPER")
    e(f"\tMOVSD X8, {ret}")
    e("\tRET")
    e()


e("//go:build amd64 && !purego")
e()
e("// AVX2+FMA statistics kernels; the Go side is kernel_amd64.go.")
e("//")
e("// Each function processes n rows (row stride `stride` elements) of w columns,")
e("// adding every row into the float64 vector s[0:w] and returning the sum of")
e("// squares of all the elements it read, accumulated in float64. Rows go in")
e("// groups of four: the four rows' elements are added to the partial sum in")
e("// registers, in row order, so s[j] is rounded exactly as by the scalar loop")
e("// ((s+x0)+x1)+..., and s is loaded and stored once per four rows. Columns go")
e("// eight at a time, then four, then one. The squares go into eight independent")
e("// ymm accumulators (Y8-Y15, one FMA chain each) plus a scalar one (X7) for")
e("// the column tail. Y0-Y5 are scratch; R8 = stride in bytes, R9 = 3*R8.")
e("//")
e("// The four variants differ only in how four elements are loaded:")
e("// VCVTPS2PD (float32) or VMOVUPD (float64), and for the diff variants the")
e("// second operand is loaded the same way and subtracted in float64.")
e()
e('#include "textflag.h"')
e()
variant("rowsF32AVX2", True, False)
variant("rowsF64AVX2", False, False)
variant("diffF32AVX2", True, True)
variant("diffF64AVX2", False, True)
sys.stdout.write("\n".join(out))
