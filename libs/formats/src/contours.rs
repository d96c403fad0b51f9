//! A slice's mask as closed polygons through the centres of its boundary pixels, as
//! OpenCV's `findContours` traces them (Suzuki and Abe's border following, 8-connected
//! foreground, 4-connected holes): one polygon per outer border of each component and one
//! per hole. Filling them even-odd, with pixels on an edge counted inside (how
//! [`crate::dicom::rasterise`] and OpenCV's `fillPoly` read contours), gives the mask back
//! exactly; the tests check that on every pattern of a 4 x 4 grid and on random masks.

/// Neighbours clockwise (x right, y down) from east.
const DIRS: [(i64, i64); 8] = [
    (1, 0),
    (1, 1),
    (0, 1),
    (-1, 1),
    (-1, 0),
    (-1, -1),
    (0, -1),
    (1, -1),
];

/// The polygons (pixel coordinates (x, y), x fastest in `mask`) of a `w` x `h` mask's
/// borders: outer borders first, then holes, each in raster order of its first pixel;
/// points where a border runs straight on are left out.
pub fn trace(mask: &[u8], w: usize, h: usize) -> Vec<Vec<[usize; 2]>> {
    assert_eq!(mask.len(), w * h, "mask size");
    let on = |x: i64, y: i64| -> bool {
        x >= 0
            && y >= 0
            && (x as usize) < w
            && (y as usize) < h
            && mask[y as usize * w + x as usize] > 0
    };
    let mut out = Vec::new();
    // Outer borders: the first pixel (raster order) of each 8-connected component, entered
    // from its west.
    let mut seen = vec![false; w * h];
    for start in 0..w * h {
        if mask[start] == 0 || seen[start] {
            continue;
        }
        flood(&mut seen, start, w, h, &|i| mask[i] > 0, true);
        let p = [(start % w) as i64, (start / w) as i64];
        out.push(follow(&on, p, 4));
    }
    // Holes: 4-connected background components that do not reach the edge; each one's first
    // pixel has foreground to its west, where its border is entered from.
    let mut outside = vec![false; w * h];
    for i in 0..w * h {
        let (x, y) = (i % w, i / w);
        let edge = x == 0 || y == 0 || x + 1 == w || y + 1 == h;
        if edge && mask[i] == 0 && !outside[i] {
            flood(&mut outside, i, w, h, &|j| mask[j] == 0, false);
        }
    }
    for start in 0..w * h {
        if mask[start] != 0 || outside[start] {
            continue;
        }
        flood(&mut outside, start, w, h, &|j| mask[j] == 0, false);
        let p = [(start % w) as i64 - 1, (start / w) as i64];
        out.push(follow(&on, p, 0));
    }
    out.into_iter().map(|c| simplify(&c)).collect()
}

/// Marks the component of `start` (8- or 4-connected) where `inside` holds.
fn flood(
    mark: &mut [bool],
    start: usize,
    w: usize,
    h: usize,
    inside: &dyn Fn(usize) -> bool,
    eight: bool,
) {
    let mut stack = vec![start];
    mark[start] = true;
    while let Some(i) = stack.pop() {
        let (x, y) = ((i % w) as i64, (i / w) as i64);
        for (k, (dx, dy)) in DIRS.iter().enumerate() {
            if !eight && k % 2 == 1 {
                continue;
            }
            let (nx, ny) = (x + dx, y + dy);
            if nx < 0 || ny < 0 || nx as usize >= w || ny as usize >= h {
                continue;
            }
            let j = ny as usize * w + nx as usize;
            if !mark[j] && inside(j) {
                mark[j] = true;
                stack.push(j);
            }
        }
    }
}

/// Suzuki and Abe's border following from foreground pixel `p0` whose neighbour in
/// direction `from` is background: the border's pixels in order.
fn follow(on: &dyn Fn(i64, i64) -> bool, p0: [i64; 2], from: usize) -> Vec<[usize; 2]> {
    let at = |p: [i64; 2], d: usize| [p[0] + DIRS[d].0, p[1] + DIRS[d].1];
    let dir = |a: [i64; 2], b: [i64; 2]| -> usize {
        DIRS.iter()
            .position(|&(dx, dy)| (b[0] - a[0], b[1] - a[1]) == (dx, dy))
            .unwrap_or(0)
    };
    let px = |p: [i64; 2]| [p[0] as usize, p[1] as usize];
    // 3.1: clockwise from the background neighbour, the first foreground one.
    let Some(p1) = (0..8)
        .map(|i| at(p0, (from + i) % 8))
        .find(|q| on(q[0], q[1]))
    else {
        return vec![px(p0)]; // an isolated pixel
    };
    let (mut p2, mut p3) = (p1, p0);
    let mut border = Vec::new();
    loop {
        // 3.3: counterclockwise around p3, from the neighbour after p2.
        let d = dir(p3, p2);
        let p4 = (1..=8)
            .map(|i| at(p3, (d + 8 - i) % 8))
            .find(|q| on(q[0], q[1]))
            .unwrap_or(p3);
        border.push(px(p3));
        if p4 == p0 && p3 == p1 {
            return border;
        }
        (p2, p3) = (p3, p4);
    }
}

/// Leaves out the points where the border goes on in the same direction.
fn simplify(c: &[[usize; 2]]) -> Vec<[usize; 2]> {
    let n = c.len();
    if n < 3 {
        return c.to_vec();
    }
    let step =
        |a: [usize; 2], b: [usize; 2]| (b[0] as i64 - a[0] as i64, b[1] as i64 - a[1] as i64);
    let kept: Vec<[usize; 2]> = (0..n)
        .filter(|&i| step(c[(i + n - 1) % n], c[i]) != step(c[i], c[(i + 1) % n]))
        .map(|i| c[i])
        .collect();
    if kept.is_empty() {
        c[..1].to_vec()
    } else {
        kept
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Even-odd fill with pixels on an edge inside: how the contours are read back.
    fn fill(polys: &[Vec<[usize; 2]>], w: usize, h: usize) -> Vec<u8> {
        let mut m = vec![0u8; w * h];
        for y in 0..h {
            for x in 0..w {
                let (px, py) = (x as f64, y as f64);
                let mut odd = false;
                let mut edge = false;
                for poly in polys {
                    let n = poly.len();
                    for e in 0..n {
                        let (a, b) = (poly[e], poly[(e + 1) % n]);
                        let (ax, ay, bx, by) = (a[0] as f64, a[1] as f64, b[0] as f64, b[1] as f64);
                        let cross = (bx - ax) * (py - ay) - (by - ay) * (px - ax);
                        let within = px >= ax.min(bx)
                            && px <= ax.max(bx)
                            && py >= ay.min(by)
                            && py <= ay.max(by);
                        if cross.abs() < 1e-9 && within {
                            edge = true;
                        }
                        if (ay <= py) != (by <= py) && px < ax + (py - ay) * (bx - ax) / (by - ay) {
                            odd = !odd;
                        }
                    }
                }
                m[y * w + x] = u8::from(odd || edge);
            }
        }
        m
    }

    #[test]
    fn every_4x4_mask_fills_back_exactly() {
        let (w, h) = (4, 4);
        for bits in 0u32..(1 << 16) {
            let mask: Vec<u8> = (0..16).map(|i| ((bits >> i) & 1) as u8).collect();
            let polys = trace(&mask, w, h);
            assert_eq!(fill(&polys, w, h), mask, "pattern {bits:016b}: {polys:?}");
        }
    }

    #[test]
    fn random_masks_with_holes_fill_back_exactly() {
        let mut s = 0x2545_F491_4F6C_DD1Du64;
        let mut rnd = move || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            s
        };
        for density in [30u64, 50, 70] {
            for _ in 0..200 {
                let (w, h) = (3 + (rnd() % 12) as usize, 3 + (rnd() % 12) as usize);
                let mask: Vec<u8> = (0..w * h)
                    .map(|_| u8::from(rnd() % 100 < density))
                    .collect();
                let polys = trace(&mask, w, h);
                assert_eq!(fill(&polys, w, h), mask, "{w}x{h}: {mask:?}");
            }
        }
        // A ring: one outer border and one hole, straight runs left out.
        let mut ring = vec![1u8; 25];
        ring[12] = 0;
        let polys = trace(&ring, 5, 5);
        assert_eq!(polys.len(), 2);
        assert_eq!(polys[0], vec![[0, 0], [0, 4], [4, 4], [4, 0]]);
        assert_eq!(fill(&polys, 5, 5), ring);
    }
}
