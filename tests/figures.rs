//! A small figure rendered end to end by the same code as `examples/`: the PNG decodes, is not
//! blank, and the SVG and CSV are written.

use rmflow::config::Config;

#[test]
fn a_small_figure_renders_and_is_not_blank() {
    let mut config = Config::default();
    config.setup.dim = 8;
    config.setup.filler_tokens = 40;
    config.setup.train_pairs = 30;
    config.setup.eval_pairs = 10;
    config.train.t_max = 1e3;
    config.train.imrm_gradient = rmflow::config::GradientPath::SeenRows;
    let dir = std::env::temp_dir().join(format!("rmflow-fig-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let data = rmflow::figures::theorem2_accuracy(&config).unwrap();
    rmflow::figures::write(&data, &dir, "small").unwrap();

    let decoder = png::Decoder::new(std::fs::File::open(dir.join("small.png")).unwrap());
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).unwrap();
    assert_eq!((info.width, info.height), (1120, 426));
    let px = &buf[..info.buffer_size()];
    let channels = px.len() / (info.width * info.height) as usize;
    let non_white = px
        .chunks(channels)
        .filter(|p| p[..3] != [255, 255, 255])
        .count();
    let fraction = non_white as f64 / (info.width * info.height) as f64;
    assert!(
        fraction > 0.02 && fraction < 0.9,
        "non-white fraction {fraction}"
    );
    let mut colours: Vec<[u8; 3]> = px.chunks(channels).map(|p| [p[0], p[1], p[2]]).collect();
    colours.sort_unstable();
    colours.dedup();
    assert!(
        colours.len() > 20,
        "only {} distinct colours",
        colours.len()
    );

    let svg = std::fs::read_to_string(dir.join("small.svg")).unwrap();
    assert!(svg.contains("<svg") && svg.contains("tie-aware accuracy"));
    let csv = std::fs::read_to_string(dir.join("small.csv")).unwrap();
    assert!(
        csv.starts_with("model,t,split,strict_accuracy,tie_aware_accuracy\n")
            && csv.lines().count() > 10
    );
    assert!(!dir.join("small.tmp.png").exists());
}

/// Every committed figure CSV is rectangular: each row has as many fields as its header (a label
/// with an unquoted comma once shifted the `ablations.csv` columns).
#[test]
fn committed_figure_csvs_are_rectangular() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("figures");
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "csv") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let mut lines = text.lines();
        let width = rmflow::io::csv::fields(lines.next().unwrap()).len();
        for (i, l) in lines.enumerate() {
            assert_eq!(
                rmflow::io::csv::fields(l).len(),
                width,
                "{} line {}: {l}",
                path.display(),
                i + 2
            );
        }
        checked += 1;
    }
    assert!(checked >= 10, "only {checked} CSVs found");
}
