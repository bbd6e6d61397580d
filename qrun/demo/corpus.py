"""The small built-in text `qrun demo` trains its own tokenizers on (written for qrun; no model's vocabulary).

Mixed Chinese and English with the characters of the `seed` benchmark questions, the words of the three chat
formats, digits, punctuation, whitespace runs and a few emoji, so that the demo tokenizers split the demo's prompts
into sensible pieces. Changing this text changes the demo vocabularies (they are rebuilt from it deterministically).
"""

from __future__ import annotations

# The seed suite's five questions (bench/suites/seed.json), verbatim: the demo bench asks them.
SEED_QUESTIONS = (
    "请说出以下两句话区别在哪里？1、冬天：能穿多少穿多少 2、夏天：能穿多少穿多少",
    "请说出以下两句话区别在哪里？单身狗产生的原因有两个，一是谁都看不上，二是谁都看不上",
    "他知道我知道你知道他不知道吗？这句话里，到底谁不知道",
    "明明明明明白白白喜欢他，可她就是不说。这句话里，明明和白白谁喜欢谁？",
    "领导：你这是什么意思？小明：没什么意思。意思意思。领导：你这就不够意思了。小明：小意思，小意思。"
    "领导：你这人真有意思。小明：其实也没有别的意思。领导：那我就不好意思了。小明：是我不好意思。"
    '请问：以上"意思"分别是什么意思。',
)

_TEXT = """\
你好！我是一个人工智能助手，很高兴为你服务。
Hello! I am an AI assistant, and I am happy to help you.
You are a helpful assistant.
你是一个乐于助人的助手。
system
user
assistant
observation
User: 你好，请介绍一下你自己。
Assistant: 你好，我是一个语言模型，可以回答问题、写文章、翻译和聊天。
User: What is the capital of China?
Assistant: The capital of China is Beijing.
User: 中国的首都是哪里？
Assistant: 中国的首都是北京。
冬天：能穿多少穿多少，意思是天气冷，要尽量多穿衣服。
夏天：能穿多少穿多少，意思是天气热，要尽量少穿衣服。
两句话的字完全一样，区别在于“多少”的意思不同：冬天是“多”，夏天是“少”。
In winter, wear as much as you can; in summer, wear as little as you can.
单身狗产生的原因有两个：一是谁都看不上（他看不上别人），二是谁都看不上（别人看不上他）。
第一句的“谁”是宾语，第二句的“谁”是主语，同样的字，意思正好相反。
One: he looks down on everyone. Two: nobody looks at him. The same words, subject versus object.
他知道我知道你知道他不知道吗？不知道的人是他。
这句话里，到底谁不知道？答案是“他”不知道。
明明明明明白白白喜欢他，可她就是不说。
第一个“明明”是人名，第二个“明明”是副词，“明白”是动词：明明明白，白白喜欢他。
所以是白白喜欢明明，不是明明喜欢白白。
不是明明喜欢白白，而是白白喜欢明明。
领导问小明是什么意思，小明说没什么意思，只是意思意思。
“意思”可以指想法、心意、礼物、情谊、有趣，也可以指不好意思。
什么意思？没什么意思。意思意思。不够意思。小意思。真有意思。别的意思。不好意思。
请说出以下两句话区别在哪里？
请问：以上各句分别是什么意思？
这句话里，谁喜欢谁？谁不知道？
今天天气很好，我们一起去公园散步吧。
明天可能会下雨，出门记得带伞。
我喜欢喝茶，他喜欢喝咖啡，她什么都不喝。
这家饭馆的饺子很好吃，价格也不贵。
周末我打算在家看书、做饭、打扫房间。
北京、上海、广州和深圳是中国的大城市。
长江是中国最长的河流，黄河是中国的第二长河。
学习一门新的语言需要时间和耐心。
他每天早上六点起床，先跑步，再吃早饭。
这个问题很简单，但是很多人都答错了。
请把这段话翻译成英文。
Please translate this paragraph into Chinese.
我不知道他是不是已经知道了这件事。
你知道吗？他其实什么都知道。
可是她就是不说，大家都不明白为什么。
小明和小红是同学，他们在同一个学校上学。
老师说：“认真学习，天天向上。”
春天花开，夏天很热，秋天凉快，冬天下雪。
一年有四个季节：春、夏、秋、冬。
一天有二十四个小时，一个小时有六十分钟。
数字：0 1 2 3 4 5 6 7 8 9 10 100 1000 2024 3.14 42
电话号码是 138-0013-8000，邮编是 100080。
价格是 ¥99.50，折扣 20%。
The price is $19.99, and shipping takes 3-5 days.
Large language models are trained on text and predict the next token.
A tokenizer splits text into tokens; a model maps tokens to probabilities.
This demo uses tiny random-weight models, so their answers are gibberish by design.
The pipeline converts a checkpoint to GGUF, quantizes it to 4 bits, and runs it with llama.cpp.
Quantization stores weights in fewer bits, which saves memory and makes inference faster on a CPU.
Tokens per second, time to first token, and peak memory are the numbers a benchmark reports.
The quick brown fox jumps over the lazy dog.
She sells sea shells by the sea shore.
It is a truth universally acknowledged that a good tool should do one thing well.
To be, or not to be, that is the question.
I think, therefore I am.
Knowledge is power, and practice makes perfect.
Don't worry, it's fine. We'll see what they've done; I'm sure you'd agree.
What's the difference between these two sentences?
Who doesn't know? Who likes whom?
Thank you very much! You're welcome.
Good morning, good afternoon, good evening, good night.
Monday, Tuesday, Wednesday, Thursday, Friday, Saturday, Sunday.
January, February, March, April, May, June, July, August, September, October, November, December.
def add(a, b):
    return a + b
for i in range(10):
    print(i)
if __name__ == "__main__":
    main()
{"question_id": "seed-1", "answer": "..."}
<html><body><p>Hello, world!</p></body></html>
    four spaces of indentation
		two tabs
trailing spaces   
a  b   c    d
line one

line three after an empty line
emoji: 😀 👍 🎉 ❤️ 🚀 ✨
中文标点：，。！？；：“”‘’（）《》、……——
English punctuation: , . ! ? ; : " ' ( ) [ ] { } - _ / \\ | @ # $ % ^ & * + = < > ~ `
计算机科学是研究计算和信息的学科。
人工智能让机器能够理解语言、识别图像和做出决定。
模型越大，需要的内存越多，运行速度也越慢。
量化可以把模型变小，同时尽量保持回答的质量。
在中央处理器上运行大模型，线程数和内存带宽都很重要。
这台电脑有两个核心和二十四吉字节内存。
请用一句话总结这篇文章的主要内容。
请写一首关于秋天的短诗。
秋风吹过田野，金黄的稻谷低下了头。
月亮升起来了，星星一闪一闪。
床前明月光，疑是地上霜。举头望明月，低头思故乡。
白日依山尽，黄河入海流。欲穷千里目，更上一层楼。
千里之行，始于足下。
三人行，必有我师焉。
学而不思则罔，思而不学则殆。
知之为知之，不知为不知，是知也。
好好学习，天天向上。
他说他明天不来了，因为他要去医院看他的奶奶。
我们应该尊重每一个人的意见。
如果你有任何问题，请随时问我。
对不起，我不太明白你的意思，能再说一遍吗？
没关系，不客气，谢谢你的帮助。
这是我的一点心意，请收下。
你太客气了，这怎么好意思呢。
他这个人真够朋友，一点都不小气。
这件事对他来说只是小意思。
你这话是什么意思？我没有别的意思。
她笑着说：“你这人真有意思。”
以上就是今天的全部内容，谢谢大家。
第一，第二，第三，最后。
首先，其次，然后，总之。
因为下雨，所以比赛推迟了。
虽然很累，但是大家都很开心。
不但会唱歌，而且会跳舞。
只要努力，就一定会成功。
无论发生什么，我都会支持你。
上下左右，东南西北，前后里外。
大小多少，长短高低，冷热快慢。
红橙黄绿青蓝紫，黑白灰。
一二三四五六七八九十百千万亿。
零点五，百分之二十，三分之一。
"""

# Short building blocks combined into more lines, so that common words occur often enough to be merged.
_SUBJECTS = ("我", "你", "他", "她", "我们", "他们", "小明", "白白", "明明", "领导", "老师", "同学")
_VERBS = ("知道", "喜欢", "明白", "看不上", "不知道", "觉得", "认为", "说")
_OBJECTS = ("这件事", "这句话", "那个人", "他的意思", "冬天的衣服", "夏天的天气", "谁", "什么")
_ENGLISH = (
    ("I", "you", "we", "they", "the model", "the user", "the assistant"),
    ("know", "like", "understand", "answer", "convert", "run", "measure"),
    ("the question", "the answer", "this sentence", "the difference", "the meaning", "the tokens"),
)


def _generated_lines() -> list[str]:
    lines = []
    for i, subject in enumerate(_SUBJECTS):
        for j, verb in enumerate(_VERBS):
            obj = _OBJECTS[(i + j) % len(_OBJECTS)]
            lines.append(f"{subject}{verb}{obj}吗？{subject}{verb}{obj}。")
    subjects, verbs, objects = _ENGLISH
    for i, subject in enumerate(subjects):
        for j, verb in enumerate(verbs):
            lines.append(f"Do {subject} {verb} {objects[(i + j) % len(objects)]}? Yes, {subject} {verb} it.")
    for n in range(1, 31):
        lines.append(f"第{n}题：{n} + {n} = {2 * n}，{n} × {n} = {n * n}。Question {n}: {n} + {n} = {2 * n}.")
    return lines


def corpus_lines() -> list[str]:
    """Every line of the demo corpus, in a fixed order."""
    return [*_TEXT.splitlines(), *_generated_lines(), *SEED_QUESTIONS]
